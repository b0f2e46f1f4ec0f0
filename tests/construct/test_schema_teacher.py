"""Schema teacher: deterministic, valid, grounded episodes in the paper's step order."""

from __future__ import annotations

import json
import time

import pytest

from ttpa_ray.construct.schema_teacher import (
    Restart,
    assemble_episode,
    build_episode,
    step_answer,
    step_query,
    step_scene,
    step_trajectory,
)
from ttpa_ray.construct.texts import render
from ttpa_ray.schema.tools import ToolSpec
from ttpa_ray.schema.validate import call_errors
from ttpa_ray.tools.catalog import load_builtin

CATALOG = load_builtin().tools
N = 1000


@pytest.fixture(scope="module")
def built():
    t0 = time.perf_counter()
    scenes, trajs, eps = [], [], []
    for seed in range(N):
        scene = step_scene(seed, CATALOG)
        traj = step_trajectory(scene, seed, CATALOG)
        answer = step_answer(scene, traj, seed)
        query = step_query(scene, traj, answer, seed)
        eps.append(assemble_episode(f"ep-{seed}", seed, scene, traj, answer, query, CATALOG))
        scenes.append(scene)
        trajs.append(traj)
    seconds = time.perf_counter() - t0
    print(f"\n{N} episodes in {seconds:.1f}s ({N / seconds:.0f} episodes/s)")
    return scenes, trajs, eps


def test_same_seed_same_episode_different_seed_different():
    assert build_episode(7, CATALOG) == build_episode(7, CATALOG)
    assert build_episode(7, CATALOG) != build_episode(8, CATALOG)


def test_steps_reproduce_from_json_alone():
    """A Ray stage may run each step in another process, on the JSON of the earlier ones."""
    scene = json.loads(json.dumps(step_scene(42, CATALOG)))
    traj = json.loads(json.dumps(step_trajectory(scene, 42, CATALOG)))
    assert traj == step_trajectory(step_scene(42, CATALOG), 42, CATALOG)
    answer = step_answer(scene, traj, 42)
    assert step_query(scene, traj, answer, 42) == step_query(scene, traj, answer, 42)


def test_scene_shape():
    for seed in range(50):
        scene = step_scene(seed, CATALOG)
        assert 7 <= len(scene["tools"]) <= 10 and len(scene["window"]) <= 20
        assert 4 <= len(scene["constraints"]) <= 7
        assert len(scene["constraints"]) == len(scene["facts"])
        for (_name, value), text in zip(scene["facts"].items(), scene["constraints"], strict=True):
            assert render(value) in text
        domains = {t.domain for t in CATALOG if t.name in scene["tools"]}
        assert len(domains) <= 2


def test_every_call_validates(built):
    _, _, eps = built
    for ep in eps:
        for m in ep.messages:
            for c in m.tool_calls or []:
                assert call_errors({"name": c.name, "arguments": c.arguments}, ep.tools) == []


def test_call_counts_and_shares(built):
    _, trajs, eps = built
    n_calls = [e.meta["n_calls"] for e in eps]
    assert all(n == 1 or 4 <= n <= 7 for n in n_calls)
    assert all(
        n == sum(len(m.tool_calls or []) for m in e.messages)
        for n, e in zip(n_calls, eps, strict=True)
    )
    single = sum(n == 1 for n in n_calls) / N
    parallel = sum(any(len(m.tool_calls or []) > 1 for m in e.messages) for e in eps) / N
    reuse = sum(t["memory_reuse"] > 0 for t in trajs) / N
    print(f"single-call {single:.1%}, parallel turn {parallel:.1%}, memory reuse {reuse:.1%}")
    assert 0.06 <= single <= 0.14
    assert 0.18 <= parallel <= 0.32
    assert reuse > 0.30


def test_memory_values_come_from_earlier_results(built):
    _, trajs, _ = built
    for traj in trajs[:300]:
        seen = ""
        for turn in traj["turns"]:
            for call in turn["calls"]:
                for name, src in call["sources"].items():
                    if src == "memory":
                        for v in (
                            call["arguments"][name]
                            if isinstance(call["arguments"][name], list)
                            else [call["arguments"][name]]
                        ):
                            assert json.dumps(v) in seen, (name, v)
            seen += json.dumps(turn["results"])  # parallel calls see only earlier turns


def test_query_states_constraints_and_needed_values(built):
    scenes, trajs, eps = built
    for scene, traj, ep in zip(scenes, trajs, eps, strict=True):
        query = ep.messages[0].content
        assert any(render(v) in query for v in scene["facts"].values())
        for turn in traj["turns"]:
            for call in turn["calls"]:
                for _path, value in call["given"]:
                    assert render(value) in query, (value, query)


def test_message_order(built):
    _, _, eps = built
    for ep in eps:
        msgs = ep.messages
        assert msgs[0].role == "user" and msgs[-1].role == "assistant"
        assert msgs[-1].content and not msgs[-1].tool_calls
        i = 1
        while i < len(msgs) - 1:
            m = msgs[i]
            assert m.role == "assistant" and m.tool_calls
            ids = [c.id for c in m.tool_calls]
            tool_msgs = msgs[i + 1 : i + 1 + len(ids)]
            assert [t.role for t in tool_msgs] == ["tool"] * len(ids)
            assert [t.tool_call_id for t in tool_msgs] == ids
            assert [t.name for t in tool_msgs] == [c.name for c in m.tool_calls]
            assert all(isinstance(json.loads(t.content), dict) for t in tool_msgs)
            i += 1 + len(ids)
        assert ep.meta["generation_order"] == ["scene", "trajectory", "answer", "query"]
        assert ep.teacher == "schema"


def test_results_echo_call_inputs():
    hits = 0
    for seed in range(200):
        ep = build_episode(seed, CATALOG)
        calls = {c.id: c for m in ep.messages for c in m.tool_calls or []}
        for m in ep.messages:
            if m.role == "tool" and m.name in ("get_current_weather", "get_weather_forecast"):
                assert (
                    json.loads(m.content)["location"] == calls[m.tool_call_id].arguments["location"]
                )
                hits += 1
    assert hits > 0


def _tool(name: str, domain: str) -> ToolSpec:
    unfillable = {"type": "string", "pattern": "^(?=x)y$"}  # no string can match
    return ToolSpec(
        name=name,
        description="needs a value nobody can give",
        parameters={"type": "object", "properties": {"code": unfillable}, "required": ["code"]},
        result_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}},
        domain=domain,
    )


def test_restart_for_an_impossible_scene():
    fake = [_tool(f"tool_{i}", "fake") for i in range(8)]
    with pytest.raises(Restart):
        build_episode(0, fake)
    scene = {
        "tools": ["get_account_balance"],
        "facts": {},
        "constraints": [],
        "scenario": "",
        "domain": "finance",
    }
    with pytest.raises(Restart, match="no callable tool"):
        step_trajectory(scene, 0, CATALOG)
