"""The held-out suite's stratified sample, the summary's intervals and paired differences,
context-length errors and the SFT parse-rate warning."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.eval import load_suite, run_eval, sft_warning, summarize
from ttpa_ray.eval.examples import Example, aggregate, score_prediction
from ttpa_ray.eval.harness import RESULT_SCHEMA
from ttpa_ray.eval.suites import load_heldout, proportional_allocation, stratified_sample
from ttpa_ray.schema.io import write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA
from ttpa_ray.tools.catalog import load_builtin

N_EPISODES = 40


@pytest.fixture(scope="module")
def construct_dir(tmp_path_factory) -> Path:
    tools = load_builtin().tools
    rows = [build_episode(seed, tools).to_row() for seed in range(N_EPISODES)]
    root = tmp_path_factory.mktemp("construct")
    write_rows(root / "episodes" / "test.parquet", rows, EPISODE_SCHEMA)
    # the tools of the first calls of three episodes are "held out"
    held = sorted(
        {
            next(m for m in r["messages"] if m["tool_calls"])["tool_calls"][0]["function"]["name"]
            for r in rows[:3]
        }
    )
    (root / "manifest.json").write_text(json.dumps({"holdout_tools": held}))
    return root


def test_proportional_allocation_by_hand():
    assert proportional_allocation({"a": 50, "b": 30, "c": 20}, 10) == {"a": 5, "b": 3, "c": 2}
    # quotas 20/9, 12/9, 4/9: floors 2, 1, 0; the one left goes to c (remainder 4/9 largest)
    assert proportional_allocation({"a": 5, "b": 3, "c": 1}, 4) == {"a": 2, "b": 1, "c": 1}
    # equal remainders: key order decides
    assert proportional_allocation({"b": 1, "a": 1}, 1) == {"a": 1, "b": 0}
    assert proportional_allocation({"a": 2, "b": 1}, 10) == {"a": 2, "b": 1}  # n > total


def test_stratified_sample_is_proportional_and_deterministic():
    strata = [("seen", 0)] * 60 + [("seen", 1)] * 30 + [("held", 0)] * 10
    keep = stratified_sample(strata, 20, seed=1)
    assert keep == sorted(keep) and len(set(keep)) == 20
    assert Counter(strata[i] for i in keep) == {("seen", 0): 12, ("seen", 1): 6, ("held", 0): 2}
    assert stratified_sample(strata, 20, seed=1) == keep
    assert stratified_sample(strata, 20, seed=2) != keep
    assert stratified_sample(strata, None, seed=1) == list(range(100))
    assert stratified_sample(strata, 500, seed=1) == list(range(100))


def test_heldout_sample_respects_turn_range_and_strata(construct_dir):
    pool, _, info = load_heldout(construct_dir, 2, max_turns=2)
    assert info["sampling"]["took_all"] and info["sampling"]["requested"] is None
    ks = Counter(e.meta["k"] for e in pool)
    assert set(ks) == {0, 1}  # only the turns TPS samples (k < max_turns)
    assert all(f"turn_{e.meta['k']}" in e.categories for e in pool)
    strata = Counter((e.categories[0], e.meta["k"]) for e in pool)
    assert strata[("heldout_tools", 0)] >= 3

    n = len(pool) // 2
    examples, _, info = load_heldout(construct_dir, 2, n=n, seed=0, max_turns=2)
    assert len(examples) == n == info["sampling"]["n"]
    assert info["sampling"]["pool"] == len(pool) and not info["sampling"]["took_all"]
    got = Counter((e.categories[0], e.meta["k"]) for e in examples)
    assert got == Counter(proportional_allocation(dict(strata), n))
    assert info["sampling"]["strata"] == {
        f"{kind}/k{k}": {"pool": strata[(kind, k)], "n": got[(kind, k)]}
        for kind, k in sorted(strata)
    }
    # in file and turn order, deterministic for a seed, another seed another sample
    order = [e.id for e in pool]
    ids = [e.id for e in examples]
    assert ids == sorted(ids, key=order.index)
    again = load_suite(f"heldout:{construct_dir}", limit=n, distractors=2, seed=0, max_turns=2)
    assert [e.id for e in again.examples] == ids and again.info["sampling"]["seed"] == 0
    other = load_heldout(construct_dir, 2, n=n, seed=1, max_turns=2)[0]
    assert [e.id for e in other] != ids


def test_heldout_pool_smaller_than_n_is_taken_whole(construct_dir, caplog):
    pool = load_heldout(construct_dir, 2, max_turns=1)[0]
    assert {e.meta["k"] for e in pool} == {0}
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        examples, _, info = load_heldout(construct_dir, 2, n=400, max_turns=1)
    assert [e.id for e in examples] == [e.id for e in pool]
    s = info["sampling"]
    assert (s["requested"], s["pool"], s["n"], s["took_all"]) == (400, len(pool), len(pool), True)
    assert "fewer than the 400 asked" in caplog.text


# -- summary -----------------------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
    },
}


def _write_model(root: Path, model: str, answers: list[str | None]) -> dict[str, Any]:
    """Score `answers` (None: a context-length refusal) for examples q0.. against gold f(a=1)
    and write the model's results.parquet and metrics.json as `run_eval` does."""
    rows = []
    for i, text in enumerate(answers):
        ex = Example(f"q{i}", ("seen_tools",), [], [TOOL], [{"name": "f", "arguments": {"a": 1}}])
        error = None if text is not None else "HTTP 400 from x: context_length_exceeded"
        rows.append(score_prediction(ex, text, error) | {"suite": "heldout", "model": model})
    out = root / model / "heldout"
    write_rows(out / "results.parquet", rows, RESULT_SCHEMA)
    metrics = aggregate(rows)
    (out / "metrics.json").write_text(json.dumps(metrics))
    return metrics


RIGHT = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
WRONG_VALUE = '<tool_call>{"name": "f", "arguments": {"a": 2}}</tool_call>'
PROSE = "I would call f."


def test_summary_keys_intervals_and_paired(tmp_path):
    n = 100
    _write_model(tmp_path, "sft", [PROSE] * 60 + [WRONG_VALUE] * 20 + [RIGHT] * 20)
    _write_model(tmp_path, "dpo_response", [PROSE] * 40 + [WRONG_VALUE] * 30 + [RIGHT] * 30)
    ttpa = _write_model(
        tmp_path, "ttpa", [None] * 10 + [PROSE] * 10 + [WRONG_VALUE] * 20 + [RIGHT] * 60
    )
    assert ttpa["context_length_exceeded"] == 10 == ttpa["errors"]["context_length_exceeded"]
    summary = summarize(tmp_path, seed=0)
    assert list(summary) == ["dpo_response", "sft", "ttpa", "paired", "sampling"]
    sft = summary["sft"]
    assert set(sft) >= {
        "esm",
        "exact",
        "ast",
        "name_acc",
        "parse_rate",
        "n",
        "exact_ci",
        "esm_ci",
        "name_acc_ci",
        "parse_rate_ci",
        "context_length_exceeded",
    }
    assert (sft["n"], sft["exact"], sft["name_acc"], sft["parse_rate"]) == (n, 0.2, 0.4, 0.4)
    assert sft["context_length_exceeded"] == 0 and sft["ast"] is None and sft["ast_ci"] is None
    for key in ("exact", "esm", "name_acc", "parse_rate"):
        lo, hi = sft[f"{key}_ci"]
        assert lo <= sft[key] <= hi and hi - lo < 0.3
    assert summary["ttpa"]["parse_rate"] == 0.8 and summary["ttpa"]["context_length_exceeded"] == 10

    paired = summary["paired"]
    assert list(paired) == ["ttpa-sft", "ttpa-dpo_response", "dpo_response-sft"]
    p = paired["ttpa-sft"]
    assert set(p) >= {"a", "b", "n", "exact_diff", "ci", "esm_diff", "esm_ci"}
    assert (p["a"], p["b"], p["n"]) == ("ttpa", "sft", n)
    assert p["exact_diff"] == pytest.approx(0.4)
    assert 0 < p["ci"][0] < 0.4 < p["ci"][1]
    assert p["esm_diff"] > 0 and p["esm_ci"][0] > 0
    # deterministic for the seed
    assert summarize(tmp_path, seed=0) == summary


def test_context_length_error_is_its_own_kind():
    ex = Example("e", ("c",), [], [TOOL], [{"name": "f", "arguments": {"a": 1}}])
    msg = "HTTP 400 from http://h/v1/chat/completions: the prompt has 900 tokens; this server accepts at most 512"
    row = score_prediction(ex, None, msg)
    assert row["error_type"].startswith("context_length_exceeded: ")
    assert (row["esm"], row["exact"], row["name_acc"], row["parsed"]) == (0.0, False, False, False)
    other = score_prediction(ex, None, "HTTP 503: busy")
    assert other["error_type"].startswith("request_error: ")
    m = aggregate([row, other])
    assert m["context_length_exceeded"] == 1
    assert m["errors"] == {"context_length_exceeded": 1, "request_error": 1}


def test_context_length_exceeded_from_the_endpoint(tmp_path, fake_server):
    src = tmp_path / "tb.jsonl"
    records = [
        {
            "id": f"r{i}",
            "query": f"q{i}" * (1 + 300 * (i == 1)),
            "tools": [TOOL],
            "answer": [{"name": "f", "arguments": {"a": 1}}],
        }
        for i in range(3)
    ]
    src.write_text("\n".join(json.dumps(r) for r in records))

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if len(body["messages"][-1]["content"]) > 100:
            return 400, {
                "error": {
                    "message": "This model's maximum context length is 64 tokens",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            }
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return 200, {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}

    m = run_eval(
        fake_server(respond)["url"], "m", f"toolbench:{src}", tmp_path / "o", progress=False
    )
    assert (m["n"], m["exact"], m["context_length_exceeded"]) == (
        3,
        pytest.approx(2 / 3, abs=1e-5),
        1,
    )
    assert m["parse_rate"] == pytest.approx(2 / 3, abs=1e-5)


def test_sft_warning():
    low = {"sft": {"parse_rate": 0.12}, "ttpa": {"parse_rate": 0.0}}
    msg = sft_warning(low)
    assert msg is not None and msg.startswith("WARNING: ")
    assert (
        "the SFT policy rarely emits tool calls; preference training has nothing to refine" in msg
    )
    assert "0.120" in msg
    assert sft_warning({"sft": {"parse_rate": 0.5}}) is None
    assert sft_warning({"sft": {"parse_rate": None}}) is None
    assert sft_warning({"ttpa": {"parse_rate": 0.1}}) is None
