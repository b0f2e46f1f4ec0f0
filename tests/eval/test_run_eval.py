"""`run_eval` end to end against a scripted local endpoint (127.0.0.1 only)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.eval import load_suite, run_eval, summarize
from ttpa_ray.schema.io import read_rows, write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA
from ttpa_ray.tools.catalog import load_builtin


def tool_calls_response(calls: list[dict[str, Any]], content: str | None = None) -> dict[str, Any]:
    """An OpenAI chat completion whose one choice makes `calls` (flat `{"name","arguments"}`)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for i, c in enumerate(calls)
        ]
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }


def last_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


PARIS3 = _call("get_weather", city="Paris", days=3)
# case -> (gold calls, what the endpoint answers: calls, "text", or "fail")
CASES: dict[str, tuple[list[dict[str, Any]], Any]] = {
    # argument order and 3 vs 3.0 do not matter
    "exact": ([PARIS3], [{"name": "get_weather", "arguments": {"days": 3.0, "city": "Paris"}}]),
    "value": ([PARIS3], [_call("get_weather", city="paris", days=3)]),
    "tool": ([_call("get_weather", city="Paris")], [_call("get_time", city="Paris")]),
    "text": ([PARIS3], "text"),
    "fail": ([PARIS3], "fail"),
    # parallel calls answered in the other order
    "parallel": (
        [_call("get_weather", city="Paris", days=1), _call("get_weather", city="Rome", days=2)],
        [_call("get_weather", city="Rome", days=2), _call("get_weather", city="Paris", days=1)],
    ),
}
# ESM by hand (DESIGN §4: (3 name + 3 required + 1 key + 2 type + 2 value) / 11):
# value: city "paris" vs "Paris" scores 0.5 (equal ignoring case, not a substring), days 1,
#   D = 2 → S_value = 0.75 → (3 + 3 + 1 + 2 + 1.5) / 11
# tool: wrong name; gold's required `city` present; get_time declares city, right type and
#   value → (0 + 3 + 1 + 2 + 2) / 11
ESM = {"exact": 1.0, "value": 10.5 / 11, "tool": 8 / 11, "text": 0.0, "fail": 0.0, "parallel": 1.0}


def _scripted(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    case = last_user(body).split("]")[0].lstrip("[")
    answer = CASES[case][1]
    if case == "exact":
        time.sleep(0.2)  # finishes last: results must still come in suite order
    if answer == "fail":
        return 500, {"error": {"message": "boom"}}
    if answer == "text":
        return 200, tool_calls_response([], content="I cannot help with that.")
    return 200, tool_calls_response(answer)


def _toolbench_file(path: Path) -> Path:
    records: list[Any] = [
        {"id": case, "query": f"[{case}] please help", "tools": TOOLS, "answer": gold}
        for case, (gold, _) in CASES.items()
    ]
    records.append({"id": "broken", "tools": TOOLS, "answer": [PARIS3]})  # no query
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_metrics_on_scripted_endpoint(tmp_path, fake_server):
    server = fake_server(_scripted)
    src = _toolbench_file(tmp_path / "cases.jsonl")
    out = tmp_path / "eval"
    m = run_eval(
        server["url"],
        "fake",
        f"toolbench:{src}",
        out,
        max_concurrency=4,
        max_tokens=64,
        max_retries=1,
        progress=False,
    )
    assert m["n"] == 6
    assert m["esm"] == pytest.approx(sum(ESM.values()) / 6, abs=1e-6)
    assert m["exact"] == pytest.approx(2 / 6, abs=1e-6)
    assert m["ast"] is None
    assert m["errors"] == {"no_call": 1, "request_error": 1, "value_mismatch": 1, "wrong_name": 1}
    assert m["request_errors"] == 1 and m["quarantined"] == 2
    single = m["by_category"]["single_call"]
    assert single["n"] == 5 and single["exact"] == pytest.approx(0.2)
    assert m["by_category"]["multi_call"] == {
        "n": 1,
        "esm": 1.0,
        "exact": 1.0,
        "ast": None,
        "name_acc": 1.0,
        "parse_rate": 1.0,
    }
    assert m["by_category"]["toolbench"]["n"] == 6

    rows = read_rows(out / "results.parquet")
    assert [r["id"] for r in rows] == list(CASES)  # suite order despite the slow first answer
    for r in rows:
        assert r["esm"] == pytest.approx(ESM[r["id"]], abs=1e-9), r["id"]
        assert r["model"] == "fake" and r["suite"] == "toolbench" and r["latency_ms"] > 0
    by_id = {r["id"]: r for r in rows}
    assert by_id["exact"]["error_type"] == "ok" and by_id["parallel"]["exact"] is True
    assert by_id["fail"]["error_type"].startswith("request_error: ")
    assert "boom" in by_id["fail"]["error_type"]
    assert by_id["text"]["pred"] == "I cannot help with that."
    assert "<tool_call>" in by_id["value"]["pred"]
    assert json.loads(by_id["tool"]["gold"]) == CASES["tool"][0]

    q = read_rows(out / "quarantine.parquet")
    assert sorted((r["stage"], r["row_id"]) for r in q) == [
        ("eval.request", "fail"),
        ("eval.toolbench", "broken"),
    ]
    assert json.loads((out / "metrics.json").read_text()) == m
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows_quarantined"] for s in manifest["stages"]] == [1, 1]
    # one retry on the 500, then given up; every request carried the tools and settings
    fails = [b for b in server["seen"] if last_user(b).startswith("[fail]")]
    assert len(fails) == 2
    assert all(b["tools"] == TOOLS and b["max_tokens"] == 64 for b in server["seen"])
    assert all(b["model"] == "fake" and b["temperature"] == 0.0 for b in server["seen"])


def test_empty_suite_raises(tmp_path):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps([{"id": "x", "query": "hi", "tools": TOOLS}]))  # no answer
    with pytest.raises(ValueError, match="no examples.*no_answer"):
        run_eval("http://127.0.0.1:9/v1", "m", f"toolbench:{src}", tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="unknown suite"):
        run_eval("http://127.0.0.1:9/v1", "m", "nope:x", tmp_path / "o", progress=False)


# -- held-out suite on schema-teacher episodes -----------------------------------------------


@pytest.fixture(scope="module")
def construct_dir(tmp_path_factory) -> tuple[Path, str]:
    tools = load_builtin().tools
    rows = [build_episode(seed, tools).to_row() for seed in range(4)]
    root = tmp_path_factory.mktemp("construct")
    write_rows(root / "episodes" / "test.parquet", rows, EPISODE_SCHEMA)
    first_call = next(m for m in rows[0]["messages"] if m["tool_calls"])["tool_calls"][0]
    held = first_call["function"]["name"]
    (root / "manifest.json").write_text(json.dumps({"holdout_tools": [held]}))
    return root, held


def test_heldout_suite(tmp_path, fake_server, construct_dir):
    root, held = construct_dir
    examples = load_suite(f"heldout:{root}", distractors=2).examples
    gold = {json.dumps(e.messages, sort_keys=True): e.gold_calls for e in examples}
    wrong_id = examples[1].id

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls = gold[json.dumps(body["messages"], sort_keys=True)]
        if body["messages"] == examples[1].messages:  # one turn answered with a bad value
            first = calls[0]
            key = next(iter(first["arguments"]))
            calls = [{"name": first["name"], "arguments": {**first["arguments"], key: "zzz"}}]
        return 200, tool_calls_response(calls)

    server = fake_server(respond)
    m = run_eval(
        server["url"],
        "sft",
        f"heldout:{root}",
        tmp_path / "sft" / "heldout",
        distractors=2,
        progress=False,
    )
    n = len(examples)
    assert m["n"] == n > 4
    assert m["exact"] == pytest.approx((n - 1) / n, abs=1e-6)
    assert m["esm"] < 1.0 and m["holdout_tools"] == [held]
    cats = m["by_category"]
    expected_held = sum(1 for e in examples if held in {c["name"] for c in e.gold_calls})
    assert expected_held >= 1
    assert cats["heldout_tools"]["n"] == expected_held
    assert cats["seen_tools"]["n"] == n - expected_held
    assert cats["single_call"]["n"] + cats.get("multi_call", {"n": 0})["n"] == n
    rows = read_rows(tmp_path / "sft" / "heldout" / "results.parquet")
    assert [r["id"] for r in rows] == [e.id for e in examples]
    assert {r["id"] for r in rows if not r["exact"]} == {wrong_id}
    # offered tools were trimmed to the called ones plus 2 distractors
    assert all(
        len(b["tools"]) <= len(gold[json.dumps(b["messages"], sort_keys=True)]) + 2
        for b in server["seen"]
    )

    # a second "model" and summarize over both
    m2 = run_eval(
        server["url"],
        "ttpa",
        f"heldout:{root}",
        tmp_path / "ttpa" / "heldout",
        limit=3,
        distractors=2,
        progress=False,
    )
    assert m2["n"] == 3
    summary = summarize(tmp_path)
    assert list(summary) == ["sft", "ttpa", "paired", "sampling"]
    assert {k: summary["sft"][k] for k in ("esm", "exact", "ast", "n")} == {
        "esm": m["esm"],
        "exact": m["exact"],
        "ast": None,
        "n": n,
    }
    assert summary["sft"]["exact_ci"] == m["exact_ci"]
    assert summary["ttpa"]["exact"] == m2["exact"]
    # paired over the 3 sampled turns both models answered
    assert summary["paired"]["ttpa-sft"]["n"] == 3
    assert summary["sampling"]["requested"] is None  # the sft run took the whole pool


def test_summarize_reads_only_the_suite(tmp_path):
    for model, suite, esm in [("a", "heldout", 0.5), ("a", "bfcl", 0.9), ("b", "bfcl", 0.1)]:
        d = tmp_path / model / suite
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"esm": esm, "exact": 0.25, "ast": None}))
    summary = summarize(tmp_path)
    assert list(summary) == ["a", "paired", "sampling"]
    assert {k: summary["a"][k] for k in ("esm", "exact", "ast")} == {
        "esm": 0.5,
        "exact": 0.25,
        "ast": None,
    }
    assert summary["paired"] == {} and summary["sampling"] is None
    assert list(summarize(tmp_path, suite="bfcl"))[:2] == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        summarize(tmp_path / "missing")


# -- BFCL (FC mode) ----------------------------------------------------------------------------


def _bfcl_installed() -> bool:
    from ttpa_ray.tools.bfcl import BfclNotInstalledError, bfcl_data_dir

    try:
        bfcl_data_dir()
    except BfclNotInstalledError:
        return False
    return True


@pytest.mark.skipif(not _bfcl_installed(), reason="bfcl-eval data not installed")
def test_bfcl_suite_ground_truth_scores_one(tmp_path, fake_server):
    from ttpa_ray.tools.bfcl import bfcl_version, ground_truth_calls, load_category

    cats = ["simple_python", "parallel_multiple"]
    # the server answers each question with its ground truth, computed here independently
    answers: dict[str, list[dict[str, Any]]] = {}
    for cat in cats:
        for e in load_category(cat)[:3]:
            to_openai = {orig: new for new, orig in e.name_map.items()}
            calls = ground_truth_calls(e.possible_answer, e.original_functions)
            answers[e.question[0][-1]["content"]] = [
                {"name": to_openai[n], "arguments": a} for n, a in calls
            ]

    server = fake_server(lambda body: (200, tool_calls_response(answers[last_user(body)])))
    m = run_eval(
        server["url"], "gt", f"bfcl:{','.join(cats)}", tmp_path / "bfcl", limit=3, progress=False
    )
    assert m["n"] == 6 and m["quarantined"] == 0
    assert m["ast"] == 1.0 and m["exact"] == 1.0 and m["esm"] == 1.0
    assert m["mode"] == "FC" and m["bfcl_eval_version"] == bfcl_version()
    assert sorted(m["by_category"]) == sorted(cats)
    assert all(v["n"] == 3 and v["ast"] == 1.0 for v in m["by_category"].values())
    # FC mode: BFCL's function docs go out as OpenAI tools with normalised types
    body = server["seen"][0]
    assert body["tools"][0]["type"] == "function"
    assert body["tools"][0]["function"]["parameters"]["type"] == "object"
    assert len(server["seen"]) == 6


# -- ToolBench layout --------------------------------------------------------------------------


def test_toolbench_api_list_file(tmp_path, fake_server):
    api = {
        "category_name": "Weather",
        "tool_name": "Weather API",
        "api_name": "5 day forecast",
        "api_description": "Forecast for a city.",
        "required_parameters": [{"name": "city", "type": "STRING", "description": "City"}],
        "optional_parameters": [{"name": "days", "type": "NUMBER", "default": "5"}],
    }
    name = "get_5_day_forecast_for_weather_api"
    records = [
        {
            "query_id": 7,
            "query": "Forecast for Lisbon, 2 days",
            "category": "G1",
            "api_list": [api],
            "answer": [
                {
                    "tool_name": "Weather API",
                    "api_name": "5 day forecast",
                    "arguments": {"city": "Lisbon", "days": 2},
                }
            ],
        },
        {
            "id": "q2",
            "query": "Forecast for Oslo",
            "api_list": [api],
            "answer": [{"action": name, "action_input": '{"city": "Oslo"}'}],
        },
        # malformed: the answer calls an API that is not offered
        {
            "id": "q3",
            "query": "x",
            "api_list": [api],
            "answer": [{"name": "nope", "arguments": {}}],
        },
        # malformed: a tool entry without an api_name
        {"id": "q4", "query": "x", "api_list": [{"tool_name": "t"}], "answer": [{"name": "a"}]},
        "not a record",
    ]
    src = tmp_path / "toolbench.json"
    src.write_text(json.dumps(records))
    seen_tools: list[Any] = []

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen_tools.append(body["tools"])
        city = "Lisbon" if "Lisbon" in last_user(body) else "Oslo"
        return 200, tool_calls_response([{"name": name, "arguments": {"city": city}}])

    server = fake_server(respond)
    m = run_eval(server["url"], "m", f"toolbench:{src}", tmp_path / "tb", progress=False)
    assert m["n"] == 2 and m["exact"] == 0.5  # Lisbon misses `days`
    assert m["errors"] == {"unknown_key": 1}  # ESM labels every short component
    rows = read_rows(tmp_path / "tb" / "results.parquet")
    assert rows[0]["error_type"] == "unknown_key,type_mismatch,value_mismatch"
    assert set(m["by_category"]) == {"G1", "toolbench", "single_call"}
    tool = seen_tools[0][0]["function"]
    assert tool["name"] == name
    assert tool["parameters"]["properties"]["days"]["type"] == "number"
    assert tool["parameters"]["required"] == ["city"]
    q = {r["row_id"]: r["reason"] for r in read_rows(tmp_path / "tb" / "quarantine.parquet")}
    assert q["q3"].startswith("gold_invalid: nope: unknown tool")
    assert q["q4"].startswith("bad_api")
    assert q["4"].startswith("not_object")
    assert [r["id"] for r in rows] == ["7", "q2"]
