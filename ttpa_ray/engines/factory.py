"""`make_engine(kind, ...)`: an engine by kind. Apart from `base` so that the protocol
module imports no engine and no engine imports back (each back end is imported only when
built: choosing `openai` never imports torch)."""

from __future__ import annotations

from typing import Any

from ttpa_ray.engines.base import ENGINE_KINDS, TextEngine


def make_engine(kind: str, **kwargs: Any) -> TextEngine:
    """Build an engine by kind: `hf` (`HFEngine`), `vllm` (`VLLMEngine`), `openai` (`OpenAIEngine`).

    `kwargs` go to the engine's constructor. The back end's module is imported only here, so
    choosing `openai` never imports torch. Raises ValueError for an unknown kind.
    """
    if kind == "hf":
        from ttpa_ray.engines.hf_engine import HFEngine

        return HFEngine(**kwargs)
    if kind == "vllm":
        from ttpa_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    if kind == "openai":
        from ttpa_ray.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(**kwargs)
    raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {', '.join(ENGINE_KINDS)}")
