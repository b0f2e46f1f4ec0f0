"""Token-level branching (DESIGN §5), engine-independent.

Given the policy's view of the gold call under teacher forcing (per gold token: its
log-probability and the policy's top-k tokens there), choose where to branch: every
position where the policy's top-1 is not the gold token, plus the `lowest_k` positions
where the gold token is least likely. At each point, the branch takes one of the
policy's top alternatives instead of the gold token; an engine then decodes the rest
of the call greedily. Candidates therefore share the gold prefix `gold[:index]` and
differ at `index`.

HF computes the positions from logits, vLLM from `prompt_logprobs`; both feed here.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from ttpa_ray.config import BranchConfig


@dataclass
class GoldPosition:
    """The policy at gold completion token `index` (teacher-forced on `gold[:index]`).

    `gold_id`/`gold_logprob`: the gold token and its log-probability. `top`: the policy's
    most likely tokens there as `(token_id, logprob)`, most likely first.
    """

    index: int
    gold_id: int
    gold_logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)

    @property
    def diverges(self) -> bool:
        """True when the policy's top-1 token is not the gold token."""
        return bool(self.top) and self.top[0][0] != self.gold_id


@dataclass(frozen=True)
class BranchPoint:
    """Branch at completion token `index` with `token_id` instead of the gold token."""

    index: int
    token_id: int
    logprob: float


def top_width(cfg: BranchConfig, skip_special: Collection[int]) -> int:
    """How many of the policy's top tokens to read per gold position (HF `topk`, vLLM
    `prompt_logprobs`): enough for `top_k` alternatives even when the gold token and every
    `skip_special` token rank above them."""
    return cfg.top_k + 1 + len(set(skip_special))


def branch_points(
    positions: list[GoldPosition], cfg: BranchConfig, skip_special: Collection[int] = ()
) -> list[BranchPoint]:
    """Where to branch and with which tokens, ordered by index then likelihood.

    Points: divergent positions (policy top-1 ≠ gold) and the `lowest_k` least likely gold
    tokens. Per point up to `top_k` alternatives (tokens ≠ gold, not in `skip_special`:
    e.g. the end-of-turn token, as a branch that ends the turn at once is not a call).
    When over `max_branches`, the alternatives the policy likes most are kept: they are
    the errors it would actually make.
    """
    skip = frozenset(skip_special)
    chosen = {p.index for p in positions if p.diverges}
    by_prob = sorted(positions, key=lambda p: (p.gold_logprob, p.index))
    chosen.update(p.index for p in by_prob[: cfg.lowest_k])
    out: list[BranchPoint] = []
    for p in positions:
        if p.index not in chosen:
            continue
        alts = [(t, lp) for t, lp in p.top if t != p.gold_id and t not in skip]
        out += [BranchPoint(p.index, t, lp) for t, lp in alts[: cfg.top_k]]
    if len(out) > cfg.max_branches:
        out = sorted(out, key=lambda b: -b.logprob)[: cfg.max_branches]
    return sorted(out, key=lambda b: (b.index, -b.logprob))


def branch_prefix(gold_ids: list[int], point: BranchPoint) -> list[int]:
    """The completion tokens a branch starts from: `gold[:index] + [token]`."""
    return [*gold_ids[: point.index], point.token_id]


def sample_cap(gold_len: int, max_tokens: int, length_factor: float) -> int:
    """New tokens an n-sample candidate may take: `max_tokens`, and at most
    `length_factor` × the gold call's length + 8 (a candidate far longer than the gold
    call is wrong anyway; decoding it further only costs)."""
    return max(1, min(max_tokens, math.ceil(length_factor * gold_len) + 8))


def branch_cap(gold_len: int, index: int, max_tokens: int, length_factor: float) -> int:
    """Tokens a branch may take from its branch point on (the branch token included): the
    rest of the gold call × `length_factor` + 8, within `max_tokens` for the whole
    completion (the shared gold prefix counts); at least 2, so every branch decodes one
    token past its branch token (an engine cannot be asked for zero new tokens)."""
    rest = math.ceil(length_factor * max(gold_len - index, 1)) + 8
    return max(2, min(max_tokens - index, rest))
