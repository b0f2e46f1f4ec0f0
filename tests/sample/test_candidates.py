"""Candidate identity (dedupe by parsed call), branch points and first differences."""

from __future__ import annotations

import pytest

from ttpa_ray.config import BranchConfig
from ttpa_ray.sample.branch import GoldPosition, branch_points, branch_prefix
from ttpa_ray.sample.candidates import Candidate, candidate_key, dedupe, first_difference


def call(name: str, **args: object) -> str:
    import json

    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def test_dedupe_by_parsed_call_not_by_text():
    a = call("get_weather", city="Paris", days=2)
    same_reordered = (
        '<tool_call>{"arguments": {"days": 2, "city": "Paris"}, "name": "get_weather"}</tool_call>'
    )
    other = call("get_weather", city="Paris", days=3)
    cands = [Candidate(a), Candidate(same_reordered), Candidate(other)]
    kept = dedupe(cands)
    assert [c.text for c in kept] == [a, other]


def test_parallel_calls_dedupe_in_any_order():
    x, y = call("a", v=1), call("b", v=2)
    kept = dedupe([Candidate(f"{x}\n{y}"), Candidate(f"{y}\n{x}"), Candidate(x)])
    assert len(kept) == 2


def test_text_only_and_unparseable_candidates_are_kept_once_each():
    texts = ["I cannot help with that.", "  I cannot help with that. ", "<tool_call>{not json"]
    kept = dedupe([Candidate(t) for t in texts])
    assert [c.text for c in kept] == [texts[0], texts[2]]
    assert candidate_key(texts[0]).startswith("text:")


def test_candidate_rejects_unknown_source():
    with pytest.raises(ValueError, match="source"):
        Candidate("x", source="beam")


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert first_difference([1, 2], [1, 2, 5]) == 2
    assert first_difference([1, 2], [1, 2]) == -1
    assert first_difference([9], [1]) == 0


def positions() -> list[GoldPosition]:
    return [
        GoldPosition(0, 10, -0.01, [(10, -0.01), (11, -5.0), (12, -6.0)]),
        GoldPosition(1, 20, -2.0, [(21, -0.5), (20, -2.0), (22, -3.0)]),  # diverges
        GoldPosition(2, 30, -0.9, [(30, -0.9), (31, -1.0), (2, -1.5)]),  # low prob, eos alt
        GoldPosition(3, 40, -0.02, [(40, -0.02), (41, -4.0)]),
    ]


def test_branch_points_take_divergent_and_least_likely_gold_tokens():
    s = BranchConfig(top_k=2, lowest_k=1, max_branches=8)
    pts = branch_points(positions(), s, skip_special={2})
    # position 1 diverges (alternatives 21, 22); position 1 is also the least likely gold
    # token, so lowest_k=1 adds nothing else.
    assert [(p.index, p.token_id) for p in pts] == [(1, 21), (1, 22)]
    s2 = BranchConfig(top_k=2, lowest_k=2, max_branches=8)
    pts2 = branch_points(positions(), s2, skip_special={2})
    # + position 2 (second least likely); its eos alternative is skipped.
    assert [(p.index, p.token_id) for p in pts2] == [(1, 21), (1, 22), (2, 31)]
    assert all(p.token_id != positions()[p.index].gold_id for p in pts2)


def test_branch_cap_keeps_the_alternatives_the_policy_likes_most():
    s = BranchConfig(top_k=2, lowest_k=4, max_branches=2)
    pts = branch_points(positions(), s)
    assert len(pts) == 2
    assert {(p.index, p.token_id) for p in pts} == {(1, 21), (2, 31)}
    assert branch_prefix([10, 20, 30, 40], pts[0]) == [10, 21]


def test_branch_settings_are_validated():
    with pytest.raises(ValueError):
        BranchConfig(top_k=0)
