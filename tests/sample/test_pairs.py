"""The pair rule on both sides of the threshold, pair rows, TRL/ShareGPT exports."""

from __future__ import annotations

import json

from ttpa_ray.sample.candidates import Candidate
from ttpa_ray.sample.pairs import (
    ScoredCandidate,
    pair_rows,
    pair_rule,
    response_pairs,
    to_sharegpt,
    to_trl,
)
from ttpa_ray.schema.records import PAIR_SCHEMA, PreferencePair
from ttpa_ray.schema.turns import episode_turns


def sc(text: str, score: float, source: str = "n_sample", **kw) -> ScoredCandidate:
    return ScoredCandidate(Candidate(text, source, **kw), score)


def test_below_threshold_gold_is_chosen_and_every_candidate_rejected():
    scored = [sc("a", 0.5), sc("b", 0.79), sc("text only", 0.0)]
    pairs = pair_rule(scored, threshold=0.8)
    assert [p.chosen for p in pairs] == [None, None, None]
    assert [p.rejected.candidate.text for p in pairs] == ["a", "b", "text only"]


def test_at_or_above_threshold_best_is_chosen_and_lower_ones_rejected():
    scored = [sc("a", 0.5), sc("best", 0.8), sc("tie", 0.8), sc("zero", 0.0)]
    pairs = pair_rule(scored, threshold=0.8)
    assert {p.chosen.candidate.text for p in pairs} == {"best"}
    assert [p.rejected.candidate.text for p in pairs] == ["a", "zero"]  # not the tie


def test_threshold_is_config_and_all_equal_yields_no_pair():
    scored = [sc("a", 0.9), sc("b", 0.9)]
    assert pair_rule(scored, threshold=0.8) == []
    assert len(pair_rule(scored, threshold=0.95)) == 2
    assert pair_rule([], 0.8) == []


def test_pair_rows_follow_the_schema_and_locate_the_branch(episode_rows):
    turn = episode_turns(episode_rows[0], distractors=1)[0][0].to_row()
    gold_ids = [5, 6, 7, 8, 2]
    branch = Candidate("x", "branch", branch_token_index=3, token_ids=[5, 6, 9, 8, 2])
    text_only = Candidate("Sorry, I can't.", "n_sample", token_ids=[40, 2])
    rows = pair_rows(
        turn,
        [ScoredCandidate(branch, 0.6), ScoredCandidate(text_only, 0.0)],
        threshold=0.8,
        gold_ids=gold_ids,
    )
    assert set(rows[0]) == set(PAIR_SCHEMA.names)
    first, second = (PreferencePair.from_row(r) for r in rows)
    # Retokenised ids put the first difference at 2, before the candidate's own index 3.
    assert first.source == "branch" and first.branch_token_index == 2
    assert first.chosen_text == turn["gold_text"] and first.chosen_score == 1.0
    assert first.chosen[0].tool_calls and first.rejected[0].content == "x"
    assert second.source == "n_sample" and second.branch_token_index == -1
    assert second.rejected_score == 0.0
    assert first.prompt[-1].role in ("user", "tool") and first.prompt[0].role == "system"


def test_exports(episode_rows):
    turn = episode_turns(episode_rows[0], distractors=1)[0][0].to_row()
    bad = turn["gold_text"].replace('"arguments": {', '"arguments": {"zzz": 1, ', 1)
    row = pair_rows(turn, [sc(bad, 0.5)], 0.8)[0]
    trl = to_trl(row)
    assert set(trl) == {"prompt", "chosen", "rejected", "tools"}
    assert trl["chosen"][0]["role"] == "assistant" and trl["chosen"][0]["tool_calls"]
    rejected_args = json.loads(trl["rejected"][0]["tool_calls"][0]["function"]["arguments"])
    assert rejected_args["zzz"] == 1
    assert trl["tools"] == json.loads(turn["tools"])
    share = to_sharegpt(row)
    assert share["chosen"]["from"] == "function_call"
    assert json.loads(share["rejected"]["value"])["arguments"]["zzz"] == 1  # one call: an object
    assert share["conversations"][0]["from"] == "human"
    assert share["system"] and json.loads(share["tools"])


def test_response_pairs_gold_against_the_first_worse_sample(episode_rows):
    turns = [t.to_row() for r in episode_rows[:2] for t in episode_turns(r, 2, 1)[0]]
    a, b = turns[0], turns[1]

    def cand(turn, source, text, score):
        return {"turn_id": turn["id"], "source": source, "text": text, "esm_score": score}

    candidates = [
        cand(a, "branch", "x", 0.1),  # branch candidates are not responses
        cand(a, "n_sample", a["gold_text"], 1.0),  # as good as gold: skipped
        cand(a, "n_sample", "first worse", 0.4),
        cand(a, "n_sample", "second worse", 0.0),
        cand(b, "n_sample", b["gold_text"], 1.0),  # no worse sample: no pair
    ]
    rows = response_pairs(turns, candidates)
    assert [r["id"] for r in rows] == [f"{a['id']}:response"]
    (row,) = rows
    assert row["source"] == "response" and row["branch_token_index"] == -1
    assert row["chosen_text"] == a["gold_text"] and row["chosen_score"] == 1.0
    assert row["rejected_text"] == "first worse" and row["rejected_score"] == 0.4
    assert PreferencePair.from_row(row).prompt  # a valid PAIR_SCHEMA row
