"""Construction steps as row functions: failures quarantine the row, counts add up."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from ttpa_ray.config import ConstructConfig, load_config
from ttpa_ray.construct.stage import _quarantine_rows, _step_counts
from ttpa_ray.construct.steps import OUT_SCHEMA, STEPS, finish_row, run_step
from ttpa_ray.schema.records import Episode, Message, ToolCall

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "maximum": 7}},
            "required": ["city"],
        },
    },
}


class Restart(Exception):
    """Named like the schema teacher's restart signal."""


class FakeTeacher:
    """A teacher double: seed % 5 picks the failure (0 ok, 1 restart, 2 crash in answer,
    3 invalid call, 4 a trajectory that is not JSON-able)."""

    name = "fake"

    def scene(self, seed: int) -> dict[str, Any]:
        if seed % 5 == 1:
            raise Restart("no chainable tools")
        return {"city": "Lisbon", "days": 9 if seed % 5 == 3 else 3}

    def trajectory(self, scene: dict[str, Any], seed: int) -> dict[str, Any]:
        if seed % 5 == 4:
            return {"bad": object()}
        return {"calls": [{"name": "get_weather", "arguments": scene}]}

    def answer(self, scene: dict[str, Any], trajectory: dict[str, Any], seed: int) -> str:
        if seed % 5 == 2:
            raise RuntimeError("model returned garbage")
        return "Sunny."

    def query(self, scene, trajectory, answer, seed) -> str:
        return f"Weather in {scene['city']}?"

    def assemble(self, row_id, seed, scene, trajectory, answer, query) -> Episode:
        call = trajectory["calls"][0]
        return Episode(
            id=row_id,
            system="sys",
            tools=[TOOL],
            messages=[
                Message("user", query),
                Message(
                    "assistant",
                    None,
                    tool_calls=[ToolCall(call["name"], call["arguments"], id="c0")],
                ),
                Message("tool", '{"sky": "clear"}', tool_call_id="c0", name="get_weather"),
                Message("assistant", answer),
            ],
            seed=seed,
        )


def run_rows(n: int) -> pa.Table:
    teacher = FakeTeacher()
    rows = []
    for seed in range(n):
        row: dict[str, Any] = {"id": f"ep-{seed}", "seed": seed}
        for step in STEPS:
            run_step(teacher, step, row)
        rows.append(finish_row(teacher, row))
    return pa.Table.from_pylist(rows, schema=OUT_SCHEMA)


def test_failures_are_quarantined_with_reasons_and_counts_add_up():
    table = run_rows(20)
    reasons = dict(
        zip(table["seed"].to_pylist(), table["_quarantine_reason"].to_pylist(), strict=True)
    )
    assert reasons[0] is None
    assert reasons[1] == "scene: restart: no chainable tools"
    assert reasons[2] == "answer: teacher_error:RuntimeError: model returned garbage"
    assert reasons[3].startswith("validate: invalid call: get_weather: days")
    assert reasons[4].startswith("trajectory: teacher_error:TypeError")
    counts = {c.stage: c for c in _step_counts(table)}
    assert (
        counts["construct.scene"].rows_in == 20 and counts["construct.scene"].rows_quarantined == 4
    )
    assert counts["construct.validate"].rows_out == 4
    for c in counts.values():
        c.check()
    q = _quarantine_rows(table.filter(pa.compute.is_valid(table["_quarantine_reason"])))
    assert len(q) == 16 and {r["stage"] for r in q} == {
        "construct.scene",
        "construct.trajectory",
        "construct.answer",
        "construct.validate",
    }
    raw = json.loads(q[0]["raw"])
    assert raw["id"] == q[0]["row_id"] and "seed" in raw


def test_ok_rows_carry_the_episode():
    table = run_rows(1)
    row = table.to_pylist()[0]
    ep = Episode.from_row(row)
    assert [m.role for m in ep.messages] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(row["_seconds"]).keys() == set(STEPS)


def test_config_validation_names_the_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("construct:\n  n_tools: [9, 3]\n  typo_key: 1\n")
    with pytest.raises(ValueError) as info:
        load_config(bad)
    assert "construct.typo_key" in str(info.value) or "typo_key" in str(info.value)
    with pytest.raises(ValueError, match="needs `model`"):
        ConstructConfig.model_validate({"teacher": {"kind": "hf"}})
    with pytest.raises(ValueError, match="val \\+ test"):
        ConstructConfig.model_validate({"split": {"val": 0.6, "test": 0.5}})
    assert load_config("configs/tiny-cpu.yaml").construct.teacher.kind == "schema"


def test_every_shipped_config_validates_and_says_how_to_run_it():
    from pathlib import Path

    configs = sorted(Path("configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        assert "ttpa-ray " in path.read_text().splitlines()[0], path
        load_config(path)
