"""Data model: records round-trip through Arrow/Parquet; tools and arguments validate."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from ttpa_ray.schema import (
    EPISODE_SCHEMA,
    PAIR_SCHEMA,
    Episode,
    Message,
    PreferencePair,
    QuarantineRecord,
    StageCounts,
    ToolCall,
    ToolSpec,
    ToolValidationError,
    argument_errors,
    call_errors,
    read_rows,
    tool_errors,
    validate_tool,
    write_manifest,
    write_quarantine,
    write_rows,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "when": {"type": "string", "format": "date"},
            },
            "required": ["city"],
        },
    },
}


def episode() -> Episode:
    return Episode(
        id="ep-1",
        system="You are a helpful assistant.",
        tools=[WEATHER],
        messages=[
            Message("user", "Weather in Paris and Rome, in celsius?"),
            Message(
                "assistant",
                None,
                tool_calls=[
                    ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="c1"),
                    ToolCall("get_weather", {"city": "Rome", "unit": "celsius"}, id="c2"),
                ],
            ),
            Message("tool", '{"temp": 21}', tool_call_id="c1", name="get_weather"),
            Message("tool", '{"temp": 25}', tool_call_id="c2", name="get_weather"),
            Message("assistant", "Paris 21°C, Rome 25°C."),
        ],
        scenario="A traveller compares cities.",
        constraints=["celsius", "two cities"],
        teacher="schema",
        seed=7,
        meta={"order": ["scene", "calls", "answer", "query"]},
    )


def test_episode_parquet_round_trip(tmp_path):
    ep = episode()
    n = write_rows(tmp_path / "episodes.parquet", [ep.to_row()], EPISODE_SCHEMA)
    assert n == 1
    assert pq.read_schema(tmp_path / "episodes.parquet").equals(EPISODE_SCHEMA)
    back = Episode.from_row(read_rows(tmp_path / "episodes.parquet")[0])
    assert back == ep
    msgs = [m.to_openai() for m in back.messages]
    assert msgs[1]["tool_calls"][1]["function"] == {
        "name": "get_weather",
        "arguments": json.dumps({"city": "Rome", "unit": "celsius"}),
    }
    assert "tool_calls" not in msgs[0] and msgs[2]["tool_call_id"] == "c1"


def test_pair_parquet_round_trip(tmp_path):
    ep = episode()
    pair = PreferencePair(
        id="p1",
        episode_id=ep.id,
        turn_index=1,
        prompt=ep.messages[:1],
        tools=ep.tools,
        chosen=[ep.messages[1]],
        rejected=[Message("assistant", "I cannot check the weather.")],
        chosen_score=1.0,
        rejected_score=0.0,
        source="branch",
        branch_token_index=5,
        chosen_text="<tool_call>...",
        rejected_text="I cannot",
    )
    write_rows(tmp_path / "pairs.parquet", [pair.to_row()], PAIR_SCHEMA)
    assert PreferencePair.from_row(read_rows(tmp_path / "pairs.parquet")[0]) == pair


def test_bad_record_values_are_rejected():
    with pytest.raises(ValueError, match="unknown role"):
        Message("robot", "hi")
    with pytest.raises(ValueError, match="unknown pair source"):
        PreferencePair("p", "e", 0, [], [], [], [], 0.0, 0.0, source="magic")
    with pytest.raises(ValueError, match="JSON object"):
        ToolCall.from_any({"name": "f", "arguments": "[1]"})


def test_toolcall_accepts_both_shapes():
    flat = ToolCall.from_any({"name": "f", "arguments": '{"a": 1}'})
    nested = ToolCall.from_any({"id": "x", "function": {"name": "f", "arguments": {"a": 1}}})
    assert (flat.name, flat.arguments) == (nested.name, nested.arguments) == ("f", {"a": 1})


def test_valid_tool_and_spec():
    validate_tool(WEATHER)
    spec = ToolSpec.from_openai(WEATHER, domain="weather")
    assert spec.to_openai() == WEATHER
    assert spec.required == ["city"]
    assert ToolSpec.from_row(spec.to_row()) == spec


def broken(**fn_overrides):
    tool = json.loads(json.dumps(WEATHER))
    tool["function"].update(fn_overrides)
    return tool


@pytest.mark.parametrize(
    ("tool", "field", "fragment"),
    [
        (broken(name="get weather!"), "function.name", "must match"),
        (broken(name=None), "function.name", "must match"),
        (broken(description=42), "function.description", "string"),
        (broken(parameters={"type": "array"}), "function.parameters.type", "'object'"),
        (broken(parameters="nope"), "function.parameters", "JSON object"),
        (
            broken(parameters={"type": "object", "properties": {"a": {"type": "strin"}}}),
            "function.parameters",
            "invalid JSON Schema",
        ),
        (
            broken(parameters={"type": "object", "properties": {"a": {}}, "required": ["b"]}),
            "function.parameters.required",
            "'b' is not in properties",
        ),
        (
            broken(
                parameters={
                    "type": "object",
                    "properties": {
                        "p": {"type": "object", "properties": {"x": {}}, "required": ["y"]}
                    },
                }
            ),
            "function.parameters.properties.p.required",
            "'y'",
        ),
        ({"type": "tool", "function": WEATHER["function"]}, "type", "'function'"),
    ],
)
def test_invalid_tools_name_tool_and_field(tool, field, fragment):
    with pytest.raises(ToolValidationError) as info:
        validate_tool(tool)
    err = info.value
    assert err.field.startswith(field)
    assert fragment in str(err)
    name = tool["function"].get("name")
    assert (repr(name) if isinstance(name, str) else "'<unnamed>'") in str(err)


def test_tool_errors_reports_duplicates_and_keeps_indexes():
    errs = tool_errors([WEATHER, broken(name="bad name"), WEATHER])
    assert [(i, e.field) for i, e in errs] == [(1, "function.name"), (2, "function.name")]
    assert "duplicate" in str(errs[1][1])


@pytest.mark.parametrize(
    ("args", "n_errors", "fragment"),
    [
        ({"city": "Paris"}, 0, None),
        ('{"city": "Paris", "days": 3}', 0, None),
        ({}, 1, "'city' is a required property"),
        ({"city": "Paris", "unit": "kelvin"}, 1, "unit"),
        ({"city": "Paris", "days": 40}, 1, "days"),
        ({"city": "Paris", "days": True}, 1, "days"),
        ({"city": "Paris", "when": "tomorrow"}, 1, "when"),
        ("{not json", 1, "not valid JSON"),
        ("[1, 2]", 1, "JSON object"),
    ],
)
def test_argument_validation(args, n_errors, fragment):
    errors = argument_errors(args, WEATHER["function"]["parameters"])
    assert len(errors) == n_errors
    if fragment:
        assert fragment in errors[0]


def test_call_errors_unknown_tool():
    assert call_errors({"name": "get_weather", "arguments": {"city": "x"}}, [WEATHER]) == []
    assert "unknown tool" in call_errors({"name": "nope", "arguments": {}}, [WEATHER])[0]
    assert call_errors({"arguments": {}}, [WEATHER]) == ["call has no function name"]


def test_stage_counts_must_add_up(tmp_path):
    StageCounts("s", 10, 7, 3).check()
    with pytest.raises(RuntimeError, match="rows were lost"):
        StageCounts("s", 10, 7, 2).check()
    path = write_manifest(tmp_path, [StageCounts("s", 3, 2, 1)], config={"a": 1})
    manifest = json.loads(path.read_text())
    assert manifest["stages"][0]["rows_quarantined"] == 1 and len(manifest["config_hash"]) == 16


def test_quarantine_file_keeps_raw_row(tmp_path):
    q = QuarantineRecord.of("construct", 5, "invalid call", {"x": [1, 2]})
    assert write_quarantine(tmp_path / "q.parquet", [q]) == 1
    row = read_rows(tmp_path / "q.parquet")[0]
    assert row == {
        "stage": "construct",
        "row_id": "5",
        "reason": "invalid call",
        "raw": '{"x": [1, 2]}',
    }
    # An empty quarantine is still written: "nothing lost" is recorded, not implied.
    assert write_quarantine(tmp_path / "empty.parquet", []) == 0
    assert read_rows(tmp_path / "empty.parquet") == []


def test_read_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Parquet data"):
        read_rows(tmp_path / "nothing.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet files"):
        read_rows(tmp_path / "empty_dir")
