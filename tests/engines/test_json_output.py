"""JSON extraction (never raises) and generate → validate → one repair."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ttpa_ray.engines import ChatRequest, GenerationParams, extract_json, generate_json


def test_bare_object_and_array():
    assert extract_json('{"a": 1}') == ({"a": 1}, None)
    assert extract_json(" [1, 2] ") == ([1, 2], None)


def test_fenced_and_prose():
    text = 'Sure! Here it is:\n```json\n{"scenario": "trip", "n": [1, 2]}\n```\nAnything else?'
    assert extract_json(text) == ({"scenario": "trip", "n": [1, 2]}, None)
    assert extract_json("```\n[1]\n```") == ([1], None)
    assert extract_json('The answer is {"x": {"y": true}} as requested.') == (
        {"x": {"y": True}},
        None,
    )


def test_skips_broken_candidates_for_a_later_valid_one():
    assert extract_json('see {not json} then {"ok": 1}') == ({"ok": 1}, None)
    # A bad fence falls back to the rest of the text.
    assert extract_json('```json\n{oops\n```\n{"ok": 2}') == ({"ok": 2}, None)


def test_reasons():
    assert extract_json("") == (None, "empty output")
    value, reason = extract_json("no json here")
    assert value is None and "no JSON" in str(reason)
    value, reason = extract_json('{"a": 1,')
    assert value is None and "invalid JSON" in str(reason)
    value, reason = extract_json('{"a": NaN}')
    assert value is None and reason
    value, reason = extract_json(None)
    assert value is None and "not a string" in str(reason)
    # Scalars are not objects/arrays.
    assert extract_json('"just a string"')[0] is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises(text):
    value, reason = extract_json(text)
    assert (value is None) != (reason is None)


class ScriptedEngine:
    """Returns the next scripted texts and records each request."""

    name = "scripted"

    def __init__(self, outputs: list[list[str]]) -> None:
        self.outputs = list(outputs)
        self.requests: list[ChatRequest] = []

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[list[str]]:
        self.requests += requests
        return [self.outputs.pop(0) for _ in requests]


def needs_name(value: Any) -> list[str]:
    return [] if isinstance(value, dict) and "name" in value else ["missing field 'name'"]


REQ = ChatRequest([{"role": "user", "content": "give JSON"}], request_id="r1")


def test_first_attempt_valid():
    engine = ScriptedEngine([['```json\n{"name": "a"}\n```']])
    assert generate_json(engine, REQ, GenerationParams(), needs_name) == ({"name": "a"}, [], 1)
    assert len(engine.requests) == 1


def test_repair_succeeds_with_errors_in_the_conversation():
    engine = ScriptedEngine([['{"nom": "a"}'], ['{"name": "b"}']])
    value, errors, attempts = generate_json(engine, REQ, GenerationParams(), needs_name)
    assert (value, errors, attempts) == ({"name": "b"}, [], 2)
    repair = engine.requests[1]
    assert repair.messages[:1] == REQ.messages
    assert repair.messages[1] == {"role": "assistant", "content": '{"nom": "a"}'}
    assert (
        repair.messages[2]["role"] == "user"
        and "missing field 'name'" in repair.messages[2]["content"]
    )
    assert repair.request_id == "r1#repair"


def test_failure_after_repair_returns_reasons():
    engine = ScriptedEngine([["prose only"], ['{"nom": 1}']])
    value, errors, attempts = generate_json(engine, REQ, GenerationParams(), needs_name)
    assert value is None and attempts == 2
    assert (
        errors[0].startswith("attempt 1: no JSON")
        and errors[1] == "attempt 2: missing field 'name'"
    )


def test_no_repair():
    engine = ScriptedEngine([["{}"]])
    value, errors, attempts = generate_json(
        engine, REQ, GenerationParams(), needs_name, repair=False
    )
    assert value is None and attempts == 1 and errors == ["attempt 1: missing field 'name'"]


def test_any_of_n_samples_and_raising_validator():
    engine = ScriptedEngine([["bad", '{"name": "ok"}']])
    assert generate_json(engine, REQ, GenerationParams(n=2, temperature=1.0), needs_name)[0] == {
        "name": "ok"
    }

    def boom(value: Any) -> list[str]:
        raise KeyError("x")

    value, errors, _ = generate_json(
        ScriptedEngine([["{}"]]), REQ, GenerationParams(), boom, repair=False
    )
    assert value is None and "validator raised KeyError" in errors[0]
