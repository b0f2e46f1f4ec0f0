"""LLM teachers: prompts, validation, repair and quarantine, without Ray (pure logic)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ttpa_ray.construct.llm_teacher import LLMTeacher, load_prompts
from ttpa_ray.construct.schema_teacher import Restart, build_episode
from ttpa_ray.construct.steps import STEPS, finish_row, make_teacher
from ttpa_ray.engines.base import GenerationParams
from ttpa_ray.tools.catalog import load_builtin

CATALOG = load_builtin().tools


def teacher(engine: Any = None, allow_single_call: bool = True) -> LLMTeacher:
    return LLMTeacher(
        "test",
        CATALOG,
        (lambda: engine) if engine else None,
        GenerationParams(),
        allow_single_call=allow_single_call,
    )


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"ep-{s}", "seed": s} for s in range(start, start + n)]


def run_all(t: LLMTeacher, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for step in STEPS:
        t.step_batch(step, batch)
    return [finish_row(t, r) for r in batch]


def test_prompt_files_are_package_data_and_fill_every_field():
    prompts = load_prompts()
    assert set(prompts) == {"system", *STEPS}
    ep = build_episode(3, CATALOG)
    t = teacher()
    scene = {
        "scenario": ep.scenario,
        "constraints": ep.constraints,
        "tools": [x["function"]["name"] for x in ep.tools],
    }
    calls = [m for m in ep.messages if m.tool_calls]
    trajectory = {
        "turns": [
            {
                "calls": [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls],
                "results": [{}] * len(m.tool_calls),
            }
            for m in calls
        ]
    }
    row = {
        "id": "x",
        "seed": 3,
        "scene": json.dumps(scene),
        "trajectory": json.dumps(trajectory),
        "answer": "Done.",
    }
    texts = {s: t.request(s, row).messages[1]["content"] for s in STEPS}
    for s, text in texts.items():
        assert not re.search(r"\$\{?[a-z_]+\}?(?![\"\w])", text), f"unfilled field in {s}"
        assert text.startswith(f"Step {STEPS.index(s) + 1} of 4")
    window = t.window(3)
    assert 0 < len(window) <= 20 and all(f"- {w.name}: " in texts["scene"] for w in window)
    assert ep.constraints[0] in texts["trajectory"] and ep.constraints[0] in texts["query"]
    assert all(
        json.dumps(ep.tools[0]["function"]["parameters"])[:40] in texts["trajectory"] for _ in [0]
    )
    assert "Done." in texts["query"] and '"results"' not in texts["query"]
    # the window is the schema teacher's: same seed, same candidate tools
    assert [w.name for w in t.window(3)] == [w.name for w in teacher().window(3)]
    assert [w.name for w in t.window(3)] != [w.name for w in t.window(4)]


def test_scene_and_trajectory_validators_name_each_problem():
    t = teacher()
    row = {"id": "x", "seed": 0}
    window = [w.name for w in t.window(0)]
    check = t.validator("scene", row)
    good = {"scenario": "s", "constraints": ["a", "b", "c", "d"], "tools": window[:7]}
    assert check(good) == []
    assert check({"restart": "no"}) == []  # a restart is a valid reply (handled by parse)
    errors = check(
        {"scenario": "", "constraints": ["a"], "tools": [*window[:5], "nope", window[0]]}
    )
    text = " | ".join(errors)
    for part in ("'scenario'", "1", "not in the list", "repeats", "7 to 10"):
        assert part in text
    assert check([1]) == ["reply must be a JSON object"]

    tools = window[:7]
    scene_row = {"id": "x", "seed": 0, "scene": json.dumps({"tools": tools})}
    check = t.validator("trajectory", scene_row)
    assert check({"turns": []}) != []
    bad = {"turns": [{"calls": [{"name": "unknown_tool", "arguments": {}}], "results": [{}, {}]}]}
    errors = " | ".join(check(bad))
    assert "unknown tool 'unknown_tool'" in errors and "one result per call" in errors
    assert "need 4 to 7 calls in all, got 1" not in errors  # a single call is allowed
    assert "need 4 to 7 calls" in " | ".join(
        teacher(allow_single_call=False).validator("trajectory", scene_row)(bad)
    )


def test_step_batch_repairs_quarantines_and_counts_add_up(scripted_engine):
    t = teacher(scripted_engine)
    batch = rows(60)
    out = run_all(t, batch)
    reasons = [r["_quarantine_reason"] for r in out]
    ok = [r for r in out if r["_quarantine_reason"] is None]
    assert len(ok) + sum(1 for r in reasons if r) == 60
    kinds = {r.split(":")[0] + ":" + r.split(":")[1] for r in reasons if r}
    # every documented failure of the scripted model shows up, each with its reason
    assert {"scene: invalid_output", "scene: restart", "trajectory: invalid_output"} <= kinds
    assert any(r and "teacher_error:EngineError" in r for r in reasons)
    invalid = next(r for r in reasons if r and r.startswith("scene: invalid_output"))
    assert "attempt 1: no JSON" in invalid and "attempt 2: no JSON" in invalid
    assert len(ok) >= 25
    # each step starts with one batched generation over its live rows; after an engine
    # error the batch is retried request by request, so one bad prompt fails only itself
    assert scripted_engine.batches[0] == 60
    assert sum(1 for b in scripted_engine.batches if b > 1) >= len(STEPS)
    # repaired scenes are among the kept episodes: their first reply was prose
    for r in ok:
        ep = json.loads(r["meta"])
        assert ep["generation_order"] == list(STEPS) and ep["n_calls"] == 4
        messages = r["messages"]
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"
        assert len(messages[1]["tool_calls"]) == 2  # a parallel turn
        assert r["teacher"] == "test"


def test_restart_and_engine_error_do_not_touch_other_rows(scripted_engine):
    t = teacher(scripted_engine)
    batch = rows(40)
    t.step_batch("scene", batch)
    failed = [r for r in batch if r.get("_quarantine_reason")]
    alive = [r for r in batch if not r.get("_quarantine_reason")]
    assert failed and alive
    assert all(json.loads(r["scene"])["tools"] for r in alive)
    assert all(r["_failed_step"] == "scene" for r in failed)
    seconds = [json.loads(r["_seconds"])["scene"] for r in batch]
    assert all(s >= 0 for s in seconds)


def test_restart_reply_raises_in_parse():
    t = teacher()
    with pytest.raises(Restart, match="no fit"):
        t.parse("scene", {"id": "x", "seed": 1}, {"restart": "no fit"})


def test_make_teacher_builds_llm_teachers_lazily(tmp_path, monkeypatch):
    base = {
        "catalog": "builtin",
        "seed": 0,
        "window": 20,
        "n_tools": (7, 10),
        "n_constraints": (4, 7),
        "n_calls": (4, 7),
    }
    from ttpa_ray.config import TeacherConfig

    hf = TeacherConfig(kind="hf", model=str(tmp_path / "missing")).model_dump()
    t = make_teacher({**base, "teacher": hf})
    assert t.name == "hf"  # nothing loaded yet
    from ttpa_ray.engines.base import EngineError

    with pytest.raises(EngineError, match="model directory not found"):
        t.engine  # noqa: B018 - the first step loads the model
    oa = TeacherConfig(
        kind="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="TTPA_TEST_KEY"
    ).model_dump()
    with pytest.raises(ValueError, match="TTPA_TEST_KEY is not set"):
        make_teacher({**base, "teacher": oa})
    monkeypatch.setenv("TTPA_TEST_KEY", "k")
    assert make_teacher({**base, "teacher": oa}).engine.api_key == "k"
    vl = TeacherConfig(kind="vllm", model="m").model_dump()
    with pytest.raises(RuntimeError, match="without an engine"):
        make_teacher({**base, "teacher": vl}).engine  # noqa: B018


def test_query_coverage_counts_values_no_result_provides():
    t = teacher()
    name = CATALOG[0].name
    reply = {
        "turns": [
            {
                "calls": [{"name": name, "arguments": {"city": "Lisbon", "n": 3}}],
                "results": [{"id": "h-1"}],
            },
            {
                "calls": [{"name": name, "arguments": {"ref": "h-1", "city": "Lisbon"}}],
                "results": [{}],
            },
        ]
    }
    traj = t._normalise(reply, 0)
    assert traj["given"] == ["Lisbon", 3] and traj["memory_reuse"] == 1
    scene = {"scenario": "s", "constraints": ["c"], "tools": [name], "domain": "x"}
    full = t.assemble("e", 0, scene, traj, "ok", "Weather in lisbon for 3 days?")
    assert full.meta["query_coverage"] == 1.0
    half = t.assemble("e", 0, scene, traj, "ok", "Weather in Lisbon, please.")
    assert half.meta["query_coverage"] == 0.5 and half.teacher == "test"


def test_teacher_logic_is_pure_python():
    """The step logic imports no Ray, torch or transformers (those live in the wiring)."""
    import subprocess
    import sys

    code = (
        "import sys, ttpa_ray.construct.llm_teacher, ttpa_ray.construct.steps;"
        "print(sorted(m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
