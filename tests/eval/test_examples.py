"""Pure scoring and aggregation of eval examples (no endpoint)."""

from __future__ import annotations

import json

import pytest

from ttpa_ray.eval.examples import (
    Example,
    aggregate,
    error_kind,
    exact_match,
    score_prediction,
)
from ttpa_ray.schema.tool_call_text import render_tool_calls

TOOL = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
            "required": ["a"],
        },
    },
}


def _ex(gold, **kw) -> Example:
    return Example(
        id="e", categories=("c", "single_call"), messages=[], tools=[TOOL], gold_calls=gold, **kw
    )


def test_exact_match_is_order_insensitive_json_equality():
    g = [{"name": "f", "arguments": {"a": 1, "b": "x"}}, {"name": "f", "arguments": {"a": 2}}]
    p = [{"name": "f", "arguments": {"a": 2.0}}, {"name": "f", "arguments": {"b": "x", "a": 1}}]
    assert exact_match(p, g)
    assert not exact_match(p[:1], g)  # missing a call
    assert not exact_match(p + p[:1], g)  # one call too many (multiset, not set)
    assert not exact_match(
        [{"name": "f", "arguments": {"a": True}}], [g[0] | {"arguments": {"a": 1}}]
    )
    assert not exact_match(
        [{"name": "f", "arguments": {"a": "1"}}], [{"name": "f", "arguments": {"a": 1}}]
    )
    assert exact_match(
        [{"name": "f", "arguments": {"l": [1, {"k": 2.0}]}}],
        [{"name": "f", "arguments": {"l": [1.0, {"k": 2}]}}],
    )
    assert exact_match([], [])


def test_score_prediction_cases():
    gold = [{"name": "f", "arguments": {"a": 1, "b": "x"}}]
    ok = score_prediction(_ex(gold), render_tool_calls(gold))
    assert (ok["esm"], ok["exact"], ok["error_type"], ok["ast"]) == (1.0, True, "ok", None)
    assert json.loads(ok["pred_calls"]) == gold and json.loads(ok["gold"]) == gold

    # a valid call plus a malformed block: ESM is perfect, exact is not
    stray = score_prediction(_ex(gold), render_tool_calls(gold) + "\n<tool_call>{oops</tool_call>")
    assert stray["esm"] == 1.0 and stray["exact"] is False and stray["error_type"] == "parse_error"

    bad = score_prediction(_ex(gold), "<tool_call>{not json}</tool_call>")
    assert bad["esm"] == 0.0 and bad["error_type"].startswith("parse_error: bad_json")

    text = score_prediction(_ex(gold), "Sure!")
    assert (text["esm"], text["exact"], text["error_type"]) == (0.0, False, "no_call")

    failed = score_prediction(_ex(gold), None, error="HTTP 500: boom")
    assert failed["esm"] == 0.0 and failed["exact"] is False and failed["pred"] == ""
    assert failed["error_type"] == "request_error: HTTP 500: boom"


def test_ast_only_where_possible_answers_exist():
    gold = [{"name": "f", "arguments": {"a": 1}}]
    possible = [{"f": {"a": [1, 2], "b": ["", "x"]}}]
    ex = _ex(gold, possible_answer=possible)
    alt = score_prediction(ex, render_tool_calls([{"name": "f", "arguments": {"a": 2}}]))
    assert alt["ast"] is True and alt["exact"] is False  # AST accepts any listed value
    wrong = score_prediction(ex, render_tool_calls([{"name": "f", "arguments": {"a": 3}}]))
    assert wrong["ast"] is False and wrong["ast_error"] == "value_error"
    failed = score_prediction(ex, None, error="down")
    assert failed["ast"] is False and failed["ast_error"] == "request_error"
    # BFCL relevance: no gold call, AST = "some call was made", ESM/exact do not apply
    rel = _ex(None, ast_any_call=True)
    r = score_prediction(rel, render_tool_calls(gold))
    assert (r["esm"], r["exact"], r["ast"], r["gold"]) == (None, None, True, None)
    assert score_prediction(rel, "no")["ast"] is False


def test_aggregate_means_skip_not_applicable():
    rows = [
        {
            "category": "a",
            "categories": ["a", "x"],
            "esm": 1.0,
            "exact": True,
            "ast": None,
            "error_type": "ok",
        },
        {
            "category": "a",
            "categories": ["a", "y"],
            "esm": 0.5,
            "exact": False,
            "ast": True,
            "error_type": "wrong_name,value_mismatch",
        },
        {
            "category": "b",
            "categories": ["b", "y"],
            "esm": None,
            "exact": None,
            "ast": False,
            "error_type": "request_error: HTTP 503: busy",
        },
    ]
    m = aggregate(rows)
    assert (m["n"], m["esm"], m["exact"], m["ast"]) == (3, 0.75, 0.5, 0.5)
    assert m["errors"] == {"request_error": 1, "wrong_name": 1}
    assert list(m["by_category"]) == ["a", "b", "x", "y"]
    assert m["by_category"]["a"] == {
        "n": 2,
        "esm": 0.75,
        "exact": 0.5,
        "ast": 1.0,
        "name_acc": None,  # these hand-made rows carry no name_acc / parsed
        "parse_rate": None,
    }
    assert m["by_category"]["x"]["ast"] is None
    assert error_kind("call_count:1!=2") == "call_count"
    assert aggregate([])["esm"] is None


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        ([{"name": "f", "arguments": {}}], [{"name": "f", "arguments": {}}], True),
        ([], [], True),  # nothing expected, nothing made (BFCL irrelevance)
        ([], [{"name": "f", "arguments": {}}], False),
    ],
)
def test_exact_edge_cases(gold, pred, expected):
    row = score_prediction(_ex(gold), render_tool_calls(pred))
    assert row["exact"] is expected and (row["error_type"] == "ok") is expected
