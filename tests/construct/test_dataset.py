"""Split (deterministic, held-out tools only in test) and export formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttpa_ray.cli import main
from ttpa_ray.construct.dataset import (
    SHAREGPT_OBSERVATION_SEP,
    episode_tool_names,
    pick_holdout_tools,
    split_rows,
    to_openai_jsonl,
    to_sharegpt,
)
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.io import write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA, Episode, Message, ToolCall
from ttpa_ray.tools.catalog import load_builtin

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
            Message("tool", '{"r": 0}', tool_call_id="c0", name=calls[0].name),
            Message("tool", '{"r": 1}', tool_call_id="c1", name=calls[1].name),
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
    assert [m["content"] for m in oa["messages"][3:5]] == ['{"r": 0}', '{"r": 1}']


def _function_calls(value: str) -> list[Any]:
    """A `function_call` turn's calls: LLaMA-Factory reads a JSON list as parallel calls."""
    calls = json.loads(value)
    return calls if isinstance(calls, list) else [calls]


def llamafactory_rejection(row: dict[str, Any]) -> str | None:
    """Why LLaMA-Factory would skip (or fail on) a ShareGPT row with tools; None if it keeps it.

    Its `SharegptDatasetConverter` (src/llamafactory/data/converter.py; rule in data/README.md,
    https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md#sharegpt-format):
    `human`/`observation` at odd positions (1st, 3rd, ...), `gpt`/`function_call` at even
    ones, an even number of turns (non-preference data), else "Invalid role tag" / "Invalid
    message count" and the example is skipped. Its formatters `json.loads` every
    `function_call` value (an object or a list of them, each with `name` and `arguments`)
    and the `tools` string, raising on invalid JSON. Ours on top: `arguments` an object.
    """
    accept = (("human", "observation"), ("gpt", "function_call"))
    turns = row["conversations"]
    for i, turn in enumerate(turns):
        if turn["from"] not in accept[i % 2]:
            return f"Invalid role tag {turn['from']!r} at position {i + 1}"
    if len(turns) % 2:
        return "Invalid message count"
    for turn in turns:
        if turn["from"] == "function_call":
            for call in _function_calls(turn["value"]):
                if not {"name", "arguments"} <= set(call) or not isinstance(
                    call["arguments"], dict
                ):
                    return f"bad function_call {turn['value']!r}"
    if not isinstance(row["tools"], str) or not isinstance(json.loads(row["tools"]), list):
        return "tools is not a JSON list string"
    return None


def test_validator_rejects_what_llamafactory_drops():
    ok = {"conversations": [{"from": "human"}, {"from": "gpt"}], "tools": "[]"}
    assert llamafactory_rejection(ok) is None
    consecutive = [
        {"from": "human", "value": "q"},
        {"from": "function_call", "value": '[{"name": "a", "arguments": {}}]'},
        {"from": "observation", "value": "1"},
        {"from": "observation", "value": "2"},
        {"from": "gpt", "value": "done"},
    ]
    assert "Invalid role tag" in llamafactory_rejection(
        {"conversations": consecutive, "tools": "[]"}
    )
    odd = {"conversations": consecutive[:3], "tools": "[]"}
    assert llamafactory_rejection(odd) == "Invalid message count"


def test_sharegpt_merges_parallel_results_into_one_observation():
    sg = to_sharegpt(row(1))
    assert [t["from"] for t in sg["conversations"]] == [
        "human",
        "function_call",
        "observation",
        "gpt",
    ]
    assert json.loads(sg["conversations"][1]["value"]) == [
        {"name": "b", "arguments": {"x": 1}},
        {"name": "c", "arguments": {}},
    ]
    # Results in call order, joined as LLaMA-Factory's own OpenAI-format converter joins them.
    assert (
        sg["conversations"][2]["value"] == '{"r": 0}\n</tool_response>\n<tool_response>\n{"r": 1}'
    )
    assert SHAREGPT_OBSERVATION_SEP == "\n</tool_response>\n<tool_response>\n"
    assert sg["system"] == "sys" and json.loads(sg["tools"])[0]["function"]["name"] == "a"
    assert llamafactory_rejection(sg) is None


def test_cli_sharegpt_export_of_constructed_episodes_loses_no_row(tmp_path: Path):
    """Schema-teacher episodes (≈25% with a parallel-call turn) through `ttpa-ray export`."""
    catalog = load_builtin().tools
    rows = [build_episode(seed, catalog).to_row() for seed in range(120)]
    parallel = [r for r in rows if any(len(m.get("tool_calls") or []) > 1 for m in r["messages"])]
    assert len(parallel) >= 15  # the case that used to be dropped is well represented
    (tmp_path / "episodes").mkdir()
    write_rows(tmp_path / "episodes" / "train.parquet", rows, EPISODE_SCHEMA)
    out = tmp_path / "sharegpt.jsonl"
    argv = ["export", "--episodes", str(tmp_path / "episodes"), "--format", "sharegpt"]
    assert main([*argv, "--out", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(exported) == len(rows)
    rejected = [(i, why) for i, r in enumerate(exported) if (why := llamafactory_rejection(r))]
    assert rejected == []
    for src, sg in zip(rows, exported, strict=True):
        results = [m for m in src["messages"] if m["role"] == "tool"]
        observations = [t["value"] for t in sg["conversations"] if t["from"] == "observation"]
        # every tool result is still there, in order, once
        merged = SHAREGPT_OBSERVATION_SEP.join(observations).split(SHAREGPT_OBSERVATION_SEP)
        assert merged == [m["content"] for m in results]
        calls = [c for m in src["messages"] for c in m.get("tool_calls") or []]
        exported_calls = [
            call
            for t in sg["conversations"]
            if t["from"] == "function_call"
            for call in _function_calls(t["value"])
        ]
        assert [c["name"] for c in exported_calls] == [c["function"]["name"] for c in calls]
