"""Candidates of one turn: what a policy wrote, how it was made, and deduplication.

Pure Python. A candidate's identity is its parsed calls (order-insensitive across
parallel calls, arguments canonical), so two samples that differ only in whitespace or
key order are one candidate. Text-only answers and unparseable text are candidates too
(ESM scores them 0); they dedupe by their stripped text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ttpa_ray.schema.tool_call_text import parse_tool_calls, to_flat_calls

SOURCES = ("n_sample", "branch")


@dataclass
class Candidate:
    """One completion of a turn.

    `text`: the completion as generated (no prompt, no end-of-turn token).
    `source`: `n_sample` or `branch`. `branch_token_index`: for `branch`, the index in
    the completion tokens where it left the gold call (-1 otherwise). `token_ids`: the
    completion's ids as training tokenizes it (`text` + end of turn), when a tokenizer was
    at hand (branch pairs need them to locate their first differing token). `logprob`:
    the policy's summed log-probability of the generated tokens, when known.
    """

    text: str
    source: str = "n_sample"
    branch_token_index: int = -1
    token_ids: list[int] | None = None
    logprob: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown candidate source {self.source!r}; expected {SOURCES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def candidate_key(text: str) -> str:
    """Dedupe key: canonical parsed calls, else `text:` + the stripped text."""
    parsed = parse_tool_calls(text)
    if parsed.tool_calls and not parsed.errors:
        try:
            calls = to_flat_calls(parsed.tool_calls)
        except (KeyError, ValueError):
            return "text:" + text.strip()
        canon = sorted(json.dumps(c, sort_keys=True, ensure_ascii=False) for c in calls)
        return "calls:" + "\n".join(canon)
    return "text:" + text.strip()


def dedupe(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates with distinct keys, first occurrence kept, order preserved."""
    seen: set[str] = set()
    out = []
    for c in candidates:
        key = candidate_key(c.text)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first position where `a` and `b` differ (len of the shorter if one is a
    prefix of the other; -1 if equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return -1 if len(a) == len(b) else min(len(a), len(b))
