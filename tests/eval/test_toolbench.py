"""ToolBench records → examples: naming, types, validation, file reading."""

from __future__ import annotations

import json

import pytest

from ttpa_ray.eval.toolbench import (
    RecordError,
    api_function_name,
    api_to_tool,
    load_toolbench,
    record_to_example,
    standardize,
)

API = {
    "tool_name": "Movie DB",
    "api_name": "search",
    "required_parameters": [{"name": "title", "type": "STRING"}],
    "optional_parameters": [
        {"name": "year", "type": "NUMBER"},
        {"name": "adult", "type": "BOOLEAN"},
        {"name": "genre", "type": "ENUM"},
    ],
}


def test_toolbench_names():
    assert standardize("  Get 5-day Forecast!! ") == "get_5_day_forecast"
    assert standardize("5 day") == "get_5_day"
    assert api_function_name("from", "Trains") == "is_from_for_trains"
    long = api_function_name("a" * 60, "Some Tool")
    assert len(long) == 64 and long.endswith("_for_some_tool")  # the last 64 are kept


def test_api_to_tool_types():
    fn = api_to_tool(API)["function"]
    assert fn["name"] == "search_for_movie_db"
    props = fn["parameters"]["properties"]
    assert [props[k]["type"] for k in ("title", "year", "adult", "genre")] == [
        "string",
        "number",
        "boolean",
        "string",
    ]
    assert fn["parameters"]["required"] == ["title"]


def test_record_validation():
    good = {
        "query": "q",
        "api_list": [API],
        "answer": {"name": "search_for_movie_db", "arguments": '{"title": "Up"}'},
    }
    ex = record_to_example(good, 3)
    assert ex.id == "toolbench-3" and ex.categories == ("toolbench", "single_call")
    assert ex.gold_calls == [{"name": "search_for_movie_db", "arguments": {"title": "Up"}}]
    assert ex.messages == [{"role": "user", "content": "q"}]
    bad_cases = {
        "gold_invalid": good | {"answer": [{"name": "search_for_movie_db", "arguments": {}}]},
        "no_query": good | {"query": " "},
        "no_tools": {"query": "q", "answer": good["answer"]},
        "bad_answer": good | {"answer": [{"name": "search_for_movie_db", "arguments": "{x"}]},
        "bad_tools": good | {"api_list": None, "tools": [{"name": "bad name!"}]},
    }
    for reason, record in bad_cases.items():
        with pytest.raises(RecordError, match=f"^{reason}"):
            record_to_example(record, 0)


def test_jsonl_bad_line_and_duplicate_ids_are_quarantined(tmp_path):
    rec = {
        "id": "a",
        "query": "q",
        "api_list": [API],
        "answer": [{"name": "search_for_movie_db", "arguments": {"title": "Up"}}],
    }
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(rec) + "\n{broken\n\n" + json.dumps(rec) + "\n")
    examples, bad = load_toolbench(path)
    assert [e.id for e in examples] == ["a"]
    assert [(q.row_id, q.reason.split(":")[0]) for q in bad] == [
        ("1", "not_object"),
        ("a", "duplicate_id"),
    ]
    with pytest.raises(FileNotFoundError):
        load_toolbench(tmp_path / "missing.json")
