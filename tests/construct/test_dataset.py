"""Split (deterministic, held-out tools only in test) and export formats."""

from __future__ import annotations

import json

from ttpa_ray.construct.dataset import (
    episode_tool_names,
    pick_holdout_tools,
    split_rows,
    to_openai_jsonl,
    to_sharegpt,
)
from ttpa_ray.schema.records import Episode, Message, ToolCall

TOOLS = [
    {
        "type": "function",
        "function": {"name": n, "parameters": {"type": "object", "properties": {}}},
    }
    for n in ("a", "b", "c", "d")
]


def row(i: int) -> dict:
    names = ["a", "b", "c", "d"]
    calls = [ToolCall(names[i % 4], {"x": i}, id="c0"), ToolCall(names[(i + 1) % 4], {}, id="c1")]
    return Episode(
        id=f"ep-{i}",
        system="sys",
        tools=TOOLS,
        messages=[
            Message("user", "q"),
            Message("assistant", None, tool_calls=calls),
            Message("tool", "{}", tool_call_id="c0", name=calls[0].name),
            Message("tool", "{}", tool_call_id="c1", name=calls[1].name),
            Message("assistant", "done"),
        ],
    ).to_row()


def test_split_is_deterministic_and_holds_tools_out():
    rows = [row(i) for i in range(400)]
    holdout = pick_holdout_tools(rows, 1, seed=0)
    assert holdout == pick_holdout_tools(rows, 1, seed=0) and len(holdout) == 1
    a = split_rows(rows, 0.1, 0.1, holdout)
    b = split_rows(list(reversed(rows)), 0.1, 0.1, holdout)
    assert {k: sorted(r["id"] for r in v) for k, v in a.items()} == {
        k: sorted(r["id"] for r in v) for k, v in b.items()
    }
    assert sum(len(v) for v in a.values()) == 400
    for split in ("train", "val"):
        assert all(not (episode_tool_names(r) & set(holdout)) for r in a[split])
    assert any(episode_tool_names(r) & set(holdout) for r in a["test"])
    no_holdout = split_rows(rows, 0.1, 0.1, [])
    assert 20 <= len(no_holdout["test"]) <= 60 and 20 <= len(no_holdout["val"]) <= 60


def test_exports_keep_every_turn():
    r = row(1)
    oa = to_openai_jsonl(r)
    assert [m["role"] for m in oa["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert oa["tools"][0]["function"]["name"] == "a"
    sg = to_sharegpt(r)
    assert [t["from"] for t in sg["conversations"]] == [
        "human",
        "function_call",
        "observation",
        "observation",
        "gpt",
    ]
    assert json.loads(sg["conversations"][1]["value"]) == [
        {"name": "b", "arguments": {"x": 1}},
        {"name": "c", "arguments": {}},
    ]
