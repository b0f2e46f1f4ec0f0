"""Episodes → tool-call turns; bad turns are quarantined with a reason, none dropped."""

from __future__ import annotations

import json

import pytest

from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.tool_call_text import parse_tool_calls, to_flat_calls
from ttpa_ray.schema.turns import episode_turns
from ttpa_ray.tools.catalog import load_builtin


@pytest.fixture(scope="module")
def episode_rows() -> list[dict]:
    """Schema-teacher episodes, as the TPS tests use them (tests/sample/conftest.py)."""
    tools = load_builtin().tools
    return [build_episode(s, tools).to_row() for s in range(6)]


def test_every_tool_call_turn_becomes_a_prompt(episode_rows):
    row = episode_rows[0]
    turns, bad = episode_turns(row)
    calling = [m for m in row["messages"] if m["role"] == "assistant" and m["tool_calls"]]
    assert bad == [] and len(turns) == len(calling)
    for t in turns:
        assert t.prompt[0]["role"] == "system"
        assert t.prompt[-1]["role"] in ("user", "tool")
        assert len(t.prompt) == t.turn_index + 1  # system + the messages before the turn
        # gold_text parses back to exactly the gold calls
        assert to_flat_calls(parse_tool_calls(t.gold_text).tool_calls) == t.gold_calls
    assert turns[0].tools == json.loads(row["tools"])


def test_distractors_trim_the_offered_tools(episode_rows):
    turns, _ = episode_turns(episode_rows[1], distractors=1)
    for t in turns:
        names = [x["function"]["name"] for x in t.tools]
        called = {c["name"] for c in t.gold_calls}
        assert called <= set(names) and len(names) <= len(called) + 1
    assert len(episode_turns(episode_rows[1], max_turns=1)[0]) == 1


def test_bad_turns_are_quarantined_with_reasons(episode_rows):
    row = json.loads(json.dumps(episode_rows[2]))
    msgs = row["messages"]
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant" and m["tool_calls"])
    msgs[first]["tool_calls"][0]["function"]["name"] = "no_such_tool"
    second = next(
        i for i, m in enumerate(msgs) if i > first and m["role"] == "assistant" and m["tool_calls"]
    )
    msgs[second]["tool_calls"][0]["function"]["arguments"] = json.dumps({"bogus": 1})
    turns, bad = episode_turns(row)
    reasons = [b.reason for b in bad]
    assert reasons[0].startswith("gold_unknown_tool") and reasons[1].startswith("gold_invalid")
    n_calling = sum(1 for m in msgs if m["role"] == "assistant" and m["tool_calls"])
    assert len(turns) + len(bad) == n_calling

    no_user = dict(
        episode_rows[0], messages=[m for m in episode_rows[0]["messages"] if m["role"] != "user"]
    )
    turns, bad = episode_turns(no_user)
    assert bad and all(b.reason.startswith("empty_history") for b in bad)

    text_only = dict(episode_rows[0], messages=[episode_rows[0]["messages"][0]])
    assert [b.reason for b in episode_turns(text_only)[1]] == ["no_tool_call_turn"]
    assert episode_turns(dict(episode_rows[0], tools="[]"))[1][0].reason.startswith("no_tools")
    assert episode_turns(dict(episode_rows[0], tools="{oops"))[1][0].reason.startswith("malformed")
