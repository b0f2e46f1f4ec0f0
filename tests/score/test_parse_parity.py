"""One text → calls function: a candidate scores the same in TPS and in evaluation.

The same model texts go through the TPS ESM map stage (`score.stage.score_candidates`, whose
scorer reads candidates as text) and through eval's `score_prediction`; the calls found
and the ESM must agree. Bare JSON without `<tool_call>` is no call in both (it once scored
1.0 in TPS and 0.0 in eval).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from ttpa_ray.eval.examples import Example, parse_prediction, score_prediction
from ttpa_ray.schema.tool_call_text import parse_prediction as schema_parse_prediction
from ttpa_ray.score.batch import ESMBatchScorer
from ttpa_ray.score.stage import _scorer, score_candidates

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
GOLD = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
OTHER = '{"name": "get_weather", "arguments": {"city": "Rome"}}'

# text → number of calls both sides must find
TEXTS = {
    "tagged": (f"<tool_call>\n{CALL}\n</tool_call>", 1),
    "bare_object": (CALL, 0),
    "bare_list": (f"[{CALL}]", 0),
    "prose": ("I cannot check the weather, sorry.", 0),
    "broken_json_tagged": ('<tool_call>\n{"name": "get_weather", "arguments": {\n</tool_call>', 0),
    "tagged_then_prose": (f"<tool_call>\n{CALL}\n</tool_call>\nHope that helps!", 1),
    "two_tagged": (f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{OTHER}\n</tool_call>", 2),
}


def _tps_scores(texts: list[str]) -> list[dict]:
    """The TPS ESM stage on one turn whose candidates are `texts`."""
    batch = pa.table(
        {
            "candidates": [json.dumps([{"text": t} for t in texts])],
            "gold_calls": [json.dumps(GOLD)],
            "tools": [json.dumps(TOOLS)],
        }
    )
    return list(json.loads(score_candidates(batch)["scores"][0].as_py()))


def test_eval_uses_the_schema_parser():
    assert parse_prediction is schema_parse_prediction


def test_tps_and_eval_agree_on_every_text():
    example = Example("x", ("simple",), [{"role": "user", "content": "?"}], TOOLS, GOLD)
    names = list(TEXTS)
    tps = _tps_scores([TEXTS[n][0] for n in names])
    scorer = _scorer()
    assert scorer.pred_format == "text"
    for name, s in zip(names, tps, strict=True):
        text, n_calls = TEXTS[name]
        row = score_prediction(example, text)
        eval_calls = json.loads(row["pred_calls"])
        tps_calls, _ = scorer.pred_calls(text)
        assert len(eval_calls) == n_calls, name
        assert tps_calls == eval_calls, name
        assert s["score"] == pytest.approx(row["esm"]), name
        if n_calls == 0:
            assert s["score"] == 0.0 and row["esm"] == 0.0, name
    by_name = dict(zip(names, tps, strict=True))
    assert by_name["tagged"]["score"] == by_name["tagged_then_prose"]["score"] == 1.0
    assert by_name["bare_object"]["reason"] == "no_call"
    assert by_name["broken_json_tagged"]["reason"].startswith("unparseable_tool_call:bad_json")
    assert 0.0 < by_name["two_tagged"]["score"] < 1.0  # two calls for one gold


def test_pred_format_is_explicit():
    gold, tools = json.dumps(GOLD), json.dumps(TOOLS)
    # "calls" reads a JSON call list (the `ttpa-ray score` CLI's default) ...
    assert ESMBatchScorer(pred_format="calls").score_row(json.dumps(GOLD), gold, tools)[0] == 1.0
    calls_on_text = ESMBatchScorer().score_row(TEXTS["tagged"][0], gold, tools)
    assert calls_on_text[0] == 0.0 and calls_on_text[6] == "calls_not_json"
    # ... "text" reads model output, where a JSON call list is no call.
    text = ESMBatchScorer(pred_format="text")
    assert text.score_row(json.dumps(GOLD), gold, tools)[6] == "no_call"
    assert text.score_row(TEXTS["tagged"][0], gold, tools)[0] == 1.0
    assert text.score_row(GOLD, gold, tools)[6] == "pred_not_text:list"
    assert text.score_row(None, gold, tools)[6] == "no_call"
    with pytest.raises(ValueError, match="pred_format"):
        ESMBatchScorer(pred_format="auto")


def test_score_cli_takes_the_format(tmp_path):
    from ttpa_ray.cli import build_parser
    from ttpa_ray.score.stage import run_score

    args = build_parser().parse_args(["score", "--in", "a", "--out", "b"])
    assert args.pred_format == "calls"
    args = build_parser().parse_args(["score", "--in", "a", "--out", "b", "--pred-format", "text"])
    assert args.pred_format == "text"
    with pytest.raises(ValueError, match="pred_format"):  # before Ray starts
        run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", pred_format="auto")
