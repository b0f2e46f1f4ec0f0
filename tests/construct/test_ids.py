"""Identifiers in schema-teacher episodes: an id-like argument gets an identifier, recalled
from an earlier result when one has it, else stated in the query (never a sentence)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ttpa_ray.construct.schema_teacher import (
    Restart,
    step_answer,
    step_query,
    step_scene,
    step_trajectory,
)
from ttpa_ray.construct.texts import render
from ttpa_ray.construct.values import id_prefix, is_id_like, is_identifier
from ttpa_ray.tools.catalog import load_builtin

CATALOG = load_builtin().tools
SPECS = {t.name: t for t in CATALOG}
# the construct config's sizes (default, and the short episodes of the tiny configs)
SIZES = {
    "default": {"n_tools": (7, 10), "n_constraints": (4, 7), "n_calls": (4, 7)},
    "short": {"n_tools": (3, 5), "n_constraints": (1, 3), "n_calls": (1, 2)},
}


def _episodes(size: str, n: int) -> list[tuple[dict, dict, str]]:
    cfg, out = SIZES[size], []
    for seed in range(n):
        try:
            scene = step_scene(
                seed, CATALOG, n_tools=cfg["n_tools"], n_constraints=cfg["n_constraints"]
            )
            traj = step_trajectory(scene, seed, CATALOG, cfg["n_calls"])
        except Restart:
            continue
        out.append((scene, traj, step_query(scene, traj, step_answer(scene, traj, seed), seed)))
    return out


@pytest.fixture(scope="module", params=list(SIZES))
def episodes(request) -> list[tuple[dict, dict, str]]:
    return _episodes(request.param, 600)


def _id_values(name: str, schema: dict[str, Any], value: Any) -> Iterator[tuple[str, Any]]:
    """(property name, value) for each id-like value in `value`, nested ones included."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k, v in value.items():
            yield from _id_values(k, props.get(k, {}), v)
    elif isinstance(value, list):
        item_name = name[:-1] if name.endswith("_ids") else name
        if is_id_like(name, schema) and not isinstance(schema.get("items", {}).get("enum"), list):
            for v in value:
                yield item_name, v
        else:
            for v in value:
                yield from _id_values(name, schema.get("items") or {}, v)
    elif is_id_like(name, schema):
        yield name, value


def _declared_names() -> dict[str, set[Any]]:
    """Ids the catalog itself names for a field (`enum`/`default`: calendar `primary`, `work`)."""
    names: dict[str, set[Any]] = {}

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            for k, sub in (s.get("properties") or {}).items():
                if isinstance(sub, dict):
                    names.setdefault(k, set()).update(sub.get("enum", []))
                    if "default" in sub:
                        names[k].add(sub["default"])
                walk(sub)
            walk(s.get("items"))

    for t in CATALOG:
        walk(t.parameters)
        walk(t.result_schema)
    return names


def _leaves(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, key)
    elif value is not None and not isinstance(value, bool):
        yield key, value


def test_id_like_is_defined_by_name_and_schema():
    for name in ("id", "ids", "message_id", "device_ids", "userId", "trackIds"):
        assert is_id_like(name), name
    for name in ("paid", "valid", "android", "identity", "message", "idle_minutes"):
        assert not is_id_like(name), name
    assert is_id_like("token", {"type": "string", "format": "uuid"})
    assert not is_id_like("calendar_id", {"type": "string", "enum": ["primary", "work"]})
    assert not is_id_like("item_id", {"type": "object"})


def test_identifier_shape():
    for v in ("MSG_8F3A2C1D", "msg_8f3a2c", "3f2a9c1e-0b4d-4a1c-a2b3-0123456789ab", 42, "AF123"):
        assert is_identifier(v), v
    for v in ("Happy to help with the launch next week.", "work", "MSG 123", "", True, 1.5):
        assert not is_identifier(v), v
    assert id_prefix("message_id") == "MSG" and id_prefix("restaurant_id") == "RST"


def test_every_id_argument_is_an_identifier(episodes):
    declared = _declared_names()
    n = 0
    for _scene, traj, _query in episodes:
        for turn in traj["turns"]:
            for call in turn["calls"]:
                params = SPECS[call["name"]].parameters
                for name, value in _id_values("", params, call["arguments"]):
                    n += 1
                    ok = is_identifier(value) or value in declared.get(name, ())
                    assert ok, (call["name"], name, value)
    assert n > 200


def test_results_carry_identifiers(episodes):
    """Memory is only as good as the results: their ids are identifiers too."""
    declared = _declared_names()
    for _scene, traj, _query in episodes[:200]:
        for turn in traj["turns"]:
            for call, result in zip(turn["calls"], turn["results"], strict=True):
                schema = SPECS[call["name"]].result_schema or {}
                for name, value in _id_values("", schema, result):
                    assert is_identifier(value) or value in declared.get(name, ()), (name, value)


def test_later_id_reuses_an_earlier_result(episodes):
    """An id of the kind an earlier result listed (same key, same prefix) is one of those."""
    reused = 0
    for _scene, traj, _query in episodes:
        earlier: dict[str, set[Any]] = {}
        for turn in traj["turns"]:
            for call in turn["calls"]:
                params = SPECS[call["name"]].parameters
                for name, value in _id_values("", params, call["arguments"]):
                    kind = str(value).split("_")[0]
                    same_kind = {v for v in earlier.get(name, ()) if str(v).split("_")[0] == kind}
                    if same_kind:
                        assert value in same_kind, (call["name"], name, value, same_kind)
                        reused += 1
            for result in turn["results"]:  # parallel calls see only earlier turns
                for key, value in _leaves(result):
                    earlier.setdefault(key, set()).add(value)
    assert reused > 30


def test_reply_uses_a_message_id_from_the_search():
    """The issue's example: search_emails lists messages, reply_to_email answers one."""
    scene = {"tools": ["search_emails", "reply_to_email"], "facts": {}, "constraints": []}
    scene |= {"scenario": "", "domain": "messaging"}
    hits = 0
    for seed in range(60):
        try:
            traj = step_trajectory(scene, seed, CATALOG, (2, 2))
        except Restart:
            continue  # the search found no message, so nothing can be replied to
        listed: set[str] = set()
        for turn in traj["turns"]:
            for call in turn["calls"]:
                if call["name"] == "reply_to_email":
                    assert call["arguments"]["message_id"] in listed
                    assert call["sources"]["message_id"] == "memory"
                    hits += 1
            for r in turn["results"]:
                listed |= {m["message_id"] for m in r.get("messages", [])}
    assert hits >= 10


def test_an_id_nobody_returned_is_invented_in_the_catalog_shape_and_stated():
    """Without a search, the user gives the message id: `MSG_…` like the tools' own ids,
    in the query, and the reply's result echoes it."""
    catalog = [SPECS["reply_to_email"]]
    for seed in range(20):
        scene = step_scene(seed, catalog, n_tools=(1, 1), n_constraints=(1, 2))
        traj = step_trajectory(scene, seed, catalog, (1, 1))
        query = step_query(scene, traj, step_answer(scene, traj, seed), seed)
        ((call,), (result,)) = traj["turns"][0]["calls"], traj["turns"][0]["results"]
        message_id = call["arguments"]["message_id"]
        assert re.fullmatch(r"MSG_[A-Z0-9]{8}", message_id) and is_identifier(message_id)
        assert call["sources"]["message_id"] == "facts" and message_id in query
        assert result["message_id"] == message_id


def test_result_rows_list_exactly_the_named_ids():
    scene = {"tools": ["list_devices", "control_lights"], "facts": {"home_id": "HOM_1A2B3C4D"}}
    scene |= {"constraints": [], "scenario": "", "domain": "smart_home"}
    hits = 0
    for seed in range(40):
        try:
            traj = step_trajectory(scene, seed, CATALOG, (2, 3))
        except Restart:
            continue
        for turn in traj["turns"]:
            for call, result in zip(turn["calls"], turn["results"], strict=True):
                if call["name"] == "control_lights":
                    ids = call["arguments"]["device_ids"]
                    assert [row["device_id"] for row in result["updated"]] == ids
                    hits += 1
    assert hits >= 5


def test_query_states_every_value_no_earlier_result_gave(episodes):
    """The model can copy every argument: from an earlier result or from the query."""
    for _scene, traj, query in episodes:
        earlier: set[str] = set()
        for turn in traj["turns"]:
            for call in turn["calls"]:
                for key, value in _leaves(call["arguments"]):
                    if json.dumps(value) not in earlier:
                        assert render(value) in query, (call["name"], key, value, query)
            for result in turn["results"]:
                earlier |= {json.dumps(v) for _k, v in _leaves(result)}
