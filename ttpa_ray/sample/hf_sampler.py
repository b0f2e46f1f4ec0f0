"""TPS on a transformers model: n-sample and token-level branching with prefix KV reuse.

Both modes forward the prompt once per turn and expand its KV cache to every candidate
(`DynamicCache.batch_repeat_interleave`); finished rows leave the batch
(`batch_select_indices`), so `forward_tokens` counts the tokens actually computed.

Branch mode forwards prompt + gold call in one pass (teacher forcing), reads the policy's
top-k at every gold position, picks branch points (`sample.branch`), then decodes all
branches of the turn as one batch on copies of that cache: branch b at gold index i
masks the cached gold tokens from i on and continues at position P + i. Nothing before
the branch point is recomputed. `kv_reuse=False` gives the naive version (each branch
recomputes prompt + gold prefix) for the benchmark and the equivalence test.

Nothing decodes past the model's context: a sample stops at the context's end, a branch
too; a prompt that does not fit (or, in branch mode, prompt + gold call) raises
`ContextLengthError` for that turn alone (the stage quarantines it; prompts are never
truncated).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ttpa_ray.config import SampleConfig
from ttpa_ray.engines.base import ChatRequest
from ttpa_ray.engines.hf_engine import ContextLengthError, HFEngine
from ttpa_ray.sample import tokens
from ttpa_ray.sample.branch import (
    GoldPosition,
    branch_cap,
    branch_points,
    branch_prefix,
    sample_cap,
    top_width,
)
from ttpa_ray.sample.candidates import Candidate
from ttpa_ray.schema.turns import Turn


@dataclass
class TurnSample:
    """What one turn produced: candidates and the tokens forwarded to get them."""

    candidates: list[Candidate]
    forward_tokens: int
    gold_ids: list[int]


def _seed(seed: int, key: str) -> int:
    # Per-turn seed: a turn's samples do not depend on which other turns share its batch.
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "little")


@dataclass
class PolicyView:
    """What `HFSampler` decodes with, over a model already in memory (a training worker's
    live policy: GRPO rollouts). It renders no prompts: sample it with `group`."""

    model: Any
    tokenizer: Any
    eos_token_ids: list[int]
    device: torch.device
    max_length: int


class HFSampler:
    """TPS candidates from a local HF model (`engine`: an `HFEngine`, for loading/prompts,
    or a `PolicyView`), decoded as `settings` asks (n, temperature, top_p, max_tokens,
    length_factor, seed, kv_reuse, branch; the engine and placement fields are not read
    here)."""

    def __init__(self, engine: HFEngine | PolicyView, settings: SampleConfig) -> None:
        self.engine = engine
        self.settings = settings
        self.model = engine.model
        self.tok = engine.tokenizer
        self.eos = set(engine.eos_token_ids)
        self.device = engine.device
        # transformers 5 renamed `past_key_values` to `cache` (the old name still works,
        # with a warning per call); use whichever this version's forward takes.
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        # Never a branch alternative: a branch that ends the turn at once is not a call.
        self.skip_special = frozenset({int(i) for i in self.tok.all_special_ids} | self.eos)

    # -- ids -------------------------------------------------------------------------------

    def prompt_ids(self, turn: Turn) -> list[int]:
        """The rendered prompt; `ContextLengthError` when it is over `max_prompt_tokens` or
        leaves no room in the context (never truncated)."""
        if isinstance(self.engine, PolicyView):
            raise TypeError("a PolicyView renders no prompts: sample prompt ids with group()")
        return self.engine.encode(
            ChatRequest(turn.prompt, turn.tools, turn.id), self.settings.max_tokens
        )

    def gold_ids(self, turn: Turn) -> list[int]:
        return tokens.gold_ids(self.tok, turn, self.eos)

    def train_ids(self, text: str) -> list[int]:
        return tokens.train_ids(self.tok, text)

    def _cap(self, gold_len: int) -> int:
        return sample_cap(gold_len, self.settings.max_tokens, self.settings.length_factor)

    # -- the decode loop --------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, cache: Any, **kw: Any) -> tuple[torch.Tensor, Any]:
        kw[self.cache_kw] = cache
        out = self.model(input_ids=ids.to(self.device), use_cache=True, **kw)
        new_cache = getattr(out, "cache", None) or out.past_key_values
        return out.logits.float(), new_cache

    def _pick(self, logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Next tokens `[B]` from last-position logits `[B, V]` (greedy if no generator)."""
        if gen is None:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.settings.temperature, -1)
        if self.settings.top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.settings.top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
        return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)

    def _decode(
        self,
        cache: Any,
        first: torch.Tensor,
        logprob0: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        cap: int | list[int],
        gen: torch.Generator | None,
    ) -> tuple[list[list[int]], list[float], int]:
        """Decode from `first` tokens (`[B]`, already chosen) until an end of turn or `cap`
        tokens. `mask`/`positions` (`[B, L]`, `[B]`) when rows continue at different
        positions. → (tokens per row incl. `first` and the end token, summed log-probs,
        tokens forwarded)."""
        rows = list(range(first.shape[0]))
        caps = cap if isinstance(cap, list) else [cap] * len(rows)
        out: list[list[int]] = [[int(t)] for t in first]
        logps = [float(x) for x in logprob0]
        cur = first.clone()
        forwarded = 0
        while True:
            live = [
                k
                for k, r in enumerate(rows)
                if out[r][-1] not in self.eos and len(out[r]) < caps[r]
            ]
            if not live:
                break
            if len(live) < len(rows):
                idx = torch.tensor(live, device=self.device)
                cache.batch_select_indices(idx)
                cur = cur[idx]
                rows = [rows[k] for k in live]
                if mask is not None and positions is not None:
                    mask, positions = mask[idx], positions[idx]
            kw: dict[str, Any] = {}
            if mask is not None and positions is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                kw = {"attention_mask": mask, "position_ids": positions[:, None]}
                positions = positions + 1
            logits, cache = self._forward(cur[:, None], cache, **kw)
            forwarded += len(rows)
            logits = logits[:, -1]
            nxt = self._pick(logits, gen)
            lp = torch.log_softmax(logits, -1).gather(-1, nxt[:, None]).squeeze(-1)
            for k, r in enumerate(rows):
                out[r].append(int(nxt[k]))
                logps[r] += float(lp[k])
            cur = nxt
        return out, logps, forwarded

    def _text(self, ids: list[int]) -> str:
        return tokens.completion_text(self.tok, ids, self.eos)

    # -- modes ------------------------------------------------------------------------------

    @torch.inference_mode()
    def n_sample(self, turn: Turn) -> TurnSample:
        """`n` samples (temperature, top-p) sharing one prompt forward (`kv_reuse=False`:
        the prompt is forwarded once per sample, as `generate(num_return_sequences=n)`
        does: the reference cost)."""
        prompt = self.prompt_ids(turn)
        gold = self.gold_ids(turn)
        seqs, logps, fwd = self.group(prompt, self.settings.n, self._cap(len(gold)), turn.id)
        cands = []
        for ids, lp in zip(seqs, logps, strict=True):
            text = self._text(ids)
            cands.append(Candidate(text, "n_sample", -1, self.train_ids(text), lp))
        return TurnSample(cands, fwd, gold)

    @torch.inference_mode()
    def group(
        self, prompt: list[int], n: int, cap: int, key: str
    ) -> tuple[list[list[int]], list[float], int]:
        """`n` completions of `prompt` (ids through the end-of-turn token, or `cap` tokens
        and at most to the context's end), their summed log-probs and the tokens forwarded
        (the prompt once with `kv_reuse`, else `n` times; then every decoded token).
        Sampling is seeded by (`settings.seed`, `key`): the same key, the same group."""
        s = self.settings
        copies = 1 if s.kv_reuse else n
        # Only the last position's logits are needed (no [P, vocab] projection).
        logits, cache = self._forward(torch.tensor([prompt] * copies), None, logits_to_keep=1)
        gen = None
        if s.temperature > 0:
            gen = torch.Generator().manual_seed(_seed(s.seed, key))
        last = logits[:1, -1].expand(n, -1)
        first = self._pick(last, gen)
        lp0 = torch.log_softmax(last, -1).gather(-1, first[:, None]).squeeze(-1)
        if s.kv_reuse:
            cache.batch_repeat_interleave(n)
        # A sample ends where the context does (prompt + sample ≤ context).
        cap = min(cap, self.engine.max_length - len(prompt))
        seqs, logps, fwd = self._decode(cache, first, lp0, None, None, cap, gen)
        return seqs, logps, copies * len(prompt) + fwd

    def gold_positions(
        self, logits: torch.Tensor, prompt_len: int, gold: list[int]
    ) -> list[GoldPosition]:
        """Per gold token: its log-prob and the policy's top-k, from teacher-forced logits
        `[1, T, V]` whose position `prompt_len - 1 + i` predicts gold token i."""
        k = top_width(self.settings.branch, self.skip_special)
        lps = torch.log_softmax(logits[0, prompt_len - 1 : prompt_len - 1 + len(gold)], -1)
        top_lp, top_ids = lps.topk(min(k, lps.shape[-1]), -1)
        return [
            GoldPosition(
                i,
                g,
                float(lps[i, g]),
                list(zip(top_ids[i].tolist(), top_lp[i].tolist(), strict=True)),
            )
            for i, g in enumerate(gold)
        ]

    @torch.inference_mode()
    def branch(self, turn: Turn) -> TurnSample:
        """Branch candidates at the gold call's weak tokens (greedy continuations)."""
        prompt = self.prompt_ids(turn)
        gold = self.gold_ids(turn)
        context = self.engine.max_length
        if len(prompt) + len(gold) > context:
            raise ContextLengthError(
                f"turn {turn.id!r}: the prompt has {len(prompt)} tokens and the gold call "
                f"{len(gold)}; together they exceed the model's context length of {context}",
                len(prompt) + len(gold),
                context,
            )
        # Logits for the gold positions only: the last len(gold) + 1 positions.
        logits, cache = self._forward(
            torch.tensor([prompt + gold]), None, logits_to_keep=len(gold) + 1
        )
        fwd = len(prompt) + len(gold)
        positions = self.gold_positions(logits, 1, gold)
        points = branch_points(positions, self.settings.branch, self.skip_special)
        if not points:
            return TurnSample([], fwd, gold)
        s = self.settings
        # A branch at gold index i starts at position P + i and ends where the context does.
        caps = [
            min(
                branch_cap(len(gold), p.index, s.max_tokens, s.length_factor),
                context - len(prompt) - p.index,
            )
            for p in points
        ]
        if s.kv_reuse:
            seqs, logps, more = self._branch_reuse(cache, len(prompt), len(gold), points, caps)
        else:
            seqs, logps, more = self._branch_naive(prompt, gold, points, caps)
        cands = []
        for p, ids, lp in zip(points, seqs, logps, strict=True):
            text = self._text(gold[: p.index] + ids)
            cand = Candidate(text, "branch", p.index, self.train_ids(text), lp + p.logprob)
            cands.append(cand)
        return TurnSample(cands, fwd + more, gold)

    def _branch_reuse(
        self, cache: Any, n_prompt: int, n_gold: int, points: list[Any], caps: list[int]
    ) -> tuple[list[list[int]], list[float], int]:
        """All branches as one batch over copies of the teacher-forced cache."""
        b = len(points)
        cache.batch_repeat_interleave(b)
        length = n_prompt + n_gold
        mask = torch.ones((b, length), dtype=torch.long, device=self.device)
        for k, p in enumerate(points):
            mask[k, n_prompt + p.index :] = 0  # gold tokens from the branch point on
        positions = torch.tensor([n_prompt + p.index for p in points], device=self.device)
        first = torch.tensor([p.token_id for p in points], device=self.device)
        return self._decode(cache, first, torch.zeros(b), mask, positions, caps, None)

    def _branch_naive(
        self, prompt: list[int], gold: list[int], points: list[Any], caps: list[int]
    ) -> tuple[list[list[int]], list[float], int]:
        """Each branch recomputes prompt + gold prefix from scratch (no KV reuse)."""
        seqs, logps, fwd = [], [], 0
        for p, cap in zip(points, caps, strict=True):
            prefix = prompt + branch_prefix(gold, p)
            _, cache = self._forward(torch.tensor([prefix[:-1]]), None, logits_to_keep=1)
            fwd += len(prefix) - 1
            first = torch.tensor([p.token_id], device=self.device)
            s, lp, f = self._decode(cache, first, torch.zeros(1), None, None, cap, None)
            seqs += s
            logps += lp
            fwd += f
        return seqs, logps, fwd

    def sample(self, turn: Turn, mode: str) -> TurnSample:
        """Candidates of `mode` (`n_sample`, `branch` or `both`) for one turn."""
        if mode == "n_sample":
            return self.n_sample(turn)
        if mode == "branch":
            return self.branch(turn)
        if mode == "both":
            a, b = self.n_sample(turn), self.branch(turn)
            return TurnSample(
                a.candidates + b.candidates, a.forward_tokens + b.forward_tokens, a.gold_ids
            )
        raise ValueError(f"unknown TPS mode {mode!r}; expected n_sample, branch or both")
