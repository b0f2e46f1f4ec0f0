"""TPS n-sample candidates from an OpenAI-compatible endpoint (e.g. our served policy).

One request per turn with `n` choices (and `logprobs` when configured); requests of a
batch run concurrently (the engine's `max_concurrency`); a failing turn is reported on
its own, the others go on. Forward tokens come from the response's `usage`. Branching
needs the policy's token-level view of the gold call, which chat endpoints do not
expose, so this engine samples only (`SampleConfig` refuses `branch` with it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ttpa_ray.engines.base import ChatRequest, EngineError, GenerationParams
from ttpa_ray.engines.openai_engine import OpenAIEngine, choice_logprob, choice_text
from ttpa_ray.sample.candidates import Candidate
from ttpa_ray.schema.turns import Turn


class OpenAISampler:
    """`sample(turns)` → per turn `(candidates, forward_tokens)` or an `EngineError`."""

    def __init__(self, cfg: Any) -> None:
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self.engine = OpenAIEngine(
            base_url=str(cfg.policy),
            model=str(cfg.model),
            api_key=key,
            max_concurrency=cfg.max_concurrency,
            max_retries=cfg.max_retries,
            timeout_s=cfg.timeout_s,
        )
        self.params = GenerationParams(
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            n=cfg.n,
            seed=cfg.seed,
        )
        self.logprobs = cfg.logprobs

    def sample_one(self, turn: Turn) -> tuple[list[Candidate], int]:
        extra = {"logprobs": True} if self.logprobs else {}
        choices, usage = self.engine.choices(
            ChatRequest(turn.prompt, turn.tools, turn.id), self.params, **extra
        )
        cands = [Candidate(choice_text(c), "n_sample", logprob=choice_logprob(c)) for c in choices]
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        return cands, tokens

    def sample(self, turns: list[Turn]) -> list[tuple[list[Candidate], int] | EngineError]:
        def one(turn: Turn) -> tuple[list[Candidate], int] | EngineError:
            try:
                return self.sample_one(turn)
            except EngineError as exc:
                return exc

        workers = max(1, min(self.engine.max_concurrency, len(turns)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tps-openai") as pool:
            return list(pool.map(one, turns))
