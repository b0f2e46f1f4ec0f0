"""The one protocol every text-generation back end implements, and its factory.

An engine turns chat requests (OpenAI-shaped `messages` plus optional per-request OpenAI
`tools`) into `n` completion texts each. Tool calls come back as text in the
`<tool_call>{json}</tool_call>` format of `ttpa_ray.schema.tool_call_text`, whatever the
back end, so callers parse one format.

Pure Python: importing this module pulls in neither torch, transformers, vLLM nor Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ENGINE_KINDS = ("hf", "vllm", "openai")


def eos_ids(tokenizer: Any, generation_eos: Any = None) -> list[int]:
    """End-of-turn token ids, in order: the generation config's eos (an int or a list), else
    the tokenizer's. One rule for the HF engine, the TPS samplers and the vLLM adapter."""
    eos = generation_eos if generation_eos is not None else tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return list(dict.fromkeys(int(e) for e in ids))


class EngineError(RuntimeError):
    """A request could not be served (bad model dir, prompt too long, HTTP error, ...)."""


class ContextLengthError(EngineError):
    """A prompt that leaves no room for a completion (or is over `max_prompt_tokens`).

    `str()` starts with `context_length_exceeded:` (quarantine reasons and logs group by
    it); `detail` is the sentence without that prefix (the HTTP error message). Clients
    that keep only the message (eval) recognise it by "context length" / "accepts at most".
    """

    def __init__(self, detail: str, prompt_tokens: int, limit: int) -> None:
        super().__init__(f"context_length_exceeded: {detail}")
        self.detail, self.prompt_tokens, self.limit = detail, prompt_tokens, limit


@dataclass
class ChatRequest:
    """One conversation to complete.

    `messages`: OpenAI chat messages (`role`, `content`, optional `tool_calls`, ...).
    `tools`: OpenAI function tools offered to the model for this request only (None: none).
    `request_id`: free-form label carried into error messages and logs.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    request_id: str = ""


@dataclass
class GenerationParams:
    """Sampling settings shared by all requests of one `generate` call.

    `max_tokens`: new tokens per completion (≥ 1). `temperature` 0 means greedy decoding.
    `n`: completions per request. `seed`: makes sampling reproducible for a given back end
    and batch (None: unseeded). `stop`: strings that end a completion (not included in it).
    """

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic (temperature 0)."""
        return self.temperature == 0


@runtime_checkable
class TextEngine(Protocol):
    """A text-generation back end.

    `generate` returns, for each request in order, a list of exactly `params.n` texts
    (the completion only: no prompt, no special tokens). It raises `EngineError` when a
    request cannot be served.
    """

    name: str

    def generate(
        self, requests: list[ChatRequest], params: GenerationParams
    ) -> list[list[str]]: ...
