"""One evaluation example, and how a model's answer to it is scored (pure functions).

An `Example` is one request (OpenAI `messages` + `tools`) with its expected calls. A
prediction is the model's answer as text (`<tool_call>` blocks, the one format every
engine returns; `ttpa_ray.schema.tool_call_text`). `score_prediction` turns the pair into
one results row; `aggregate` turns rows into the metrics of a run.

Metrics per example:

- `esm`: ESM of the predicted calls against the gold calls (DESIGN §4).
- `exact`: the multiset of predicted calls equals the gold one: order-insensitive (parallel
  calls), names equal, arguments equal as JSON values (`1 == 1.0`, `true != 1`, key order
  ignored), and no malformed `<tool_call>` block.
- `name_acc`: the multiset of predicted tool names equals the gold one (the right tools,
  whatever their arguments); `None` where there is no gold call list.
- `parsed`: at least one parseable call came back (its mean is the `parse_rate`).
- `ast`: BFCL's AST check against every acceptable answer (`ttpa_ray.score.ast_checker`),
  only where BFCL possible answers exist; `None` elsewhere.
- `error_type`: `"ok"` when exact, else why not: the ESM reason (`wrong_name`,
  `value_mismatch`, `no_call`, `unknown_tool`, ...), `parse_error: ...` when the output
  held only malformed blocks, `context_length_exceeded: ...` when the endpoint refused the
  prompt as longer than its context (HTTP 400, code `context_length_exceeded`), or
  `request_error: ...` when no answer came back for another reason.

A failed request still counts: it is an example the endpoint did not answer, so it scores
0 everywhere (otherwise a flaky endpoint would look better than a reliable one). A prompt
over the context is counted apart (`context_length_exceeded` in the metrics) because it
says the suite does not fit the model, not that the model answered badly.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ttpa_ray.eval.stats import bootstrap_ci
from ttpa_ray.schema.tool_call_text import parse_prediction
from ttpa_ray.score.ast_checker import ast_check
from ttpa_ray.score.esm import esm_breakdown
from ttpa_ray.score.exact import exact_match, names_match

OK = "ok"
REQUEST_ERROR = "request_error"
PARSE_ERROR = "parse_error"
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# summary metric → results-row column (bools count 0/1); each gets a bootstrap interval
METRIC_COLUMNS = {
    "exact": "exact",
    "esm": "esm",
    "name_acc": "name_acc",
    "parse_rate": "parsed",
    "ast": "ast",
}
# The OpenAI client keeps only the error message: the code when the server puts it there,
# else the wording of OpenAI/vLLM ("maximum context length") and of our endpoint.
_CONTEXT_RE = re.compile(
    r"context_length_exceeded|maximum context length|context length|accepts at most \d+",
    re.IGNORECASE,
)


@dataclass
class Example:
    """One request to the endpoint and what it should answer.

    `categories`: every bucket the example counts in (`by_category` buckets may overlap,
    e.g. `heldout_tools` and `multi_call`); the first is its main `category`.
    `gold_calls`: flat calls `{"name", "arguments": dict}` (`[]`: no call expected;
    `None`: no gold call known, as in BFCL's `live_relevance`, so ESM/exact do not apply).
    `possible_answer`: BFCL ground truth for the AST check against `tools` in `language`
    (`None`: AST not applicable, unless `ast_any_call`).
    """

    id: str
    categories: tuple[str, ...]
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    gold_calls: list[dict[str, Any]] | None
    possible_answer: list[dict[str, Any]] | None = None
    language: str = "python"
    ast_any_call: bool = False  # BFCL relevance: AST passes when any call is made
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return self.categories[0]

    @property
    def ast_applicable(self) -> bool:
        return self.possible_answer is not None or self.ast_any_call


def is_context_length_error(error: str) -> bool:
    """Whether a failed request's error says the prompt did not fit the model's context."""
    return bool(_CONTEXT_RE.search(error))


def score_prediction(
    example: Example, text: str | None, error: str | None = None
) -> dict[str, Any]:
    """One results row (without suite/model/latency) for `example` answered by `text`.

    `error`: why the request failed (then `text` is ignored and everything scores 0).
    """
    gold = example.gold_calls
    row: dict[str, Any] = {
        "id": example.id,
        "category": example.category,
        "categories": list(example.categories),
        "gold": None if gold is None else json.dumps(gold, ensure_ascii=False),
    }
    if error is not None:
        applicable = gold is not None
        kind = CONTEXT_LENGTH_EXCEEDED if is_context_length_error(error) else REQUEST_ERROR
        return row | {
            "esm": 0.0 if applicable else None,
            "exact": False if applicable else None,
            "name_acc": False if applicable else None,
            "parsed": False,
            "ast": False if example.ast_applicable else None,
            "ast_error": kind if example.ast_applicable else None,
            "error_type": f"{kind}: {error}",
            "pred": "",
            "pred_calls": "[]",
        }
    text = text or ""
    calls, parse_errors = parse_prediction(text)
    row |= {
        "pred": text,
        "pred_calls": json.dumps(calls, ensure_ascii=False),
        "parsed": bool(calls),
    }
    if gold is None:
        row |= {"esm": None, "exact": None, "name_acc": None}
        error_type = OK if calls else "no_call"
    else:
        breakdown = esm_breakdown(calls, gold, example.tools)
        exact = exact_match(calls, gold) and not parse_errors
        row |= {
            "esm": float(breakdown["score"]),
            "exact": exact,
            "name_acc": names_match(calls, gold),
        }
        if exact:
            error_type = OK
        elif parse_errors and not calls:
            error_type = f"{PARSE_ERROR}: {parse_errors[0]}"
        else:
            # ESM can be perfect while exact fails (a stray malformed block; duplicates)
            error_type = breakdown["reason"] or (PARSE_ERROR if parse_errors else "inexact")
    row["error_type"] = error_type
    if example.ast_any_call:
        row["ast"], row["ast_error"] = bool(calls), None if calls else "no_call"
    elif example.possible_answer is not None:
        ok, ast_error = ast_check(calls, example.possible_answer, example.tools, example.language)
        row["ast"], row["ast_error"] = bool(ok), ast_error
    else:
        row["ast"], row["ast_error"] = None, None
    return row


def error_kind(error_type: str) -> str:
    """The bucket of an `error_type` in `metrics["errors"]`: its first label without
    detail, so the buckets stay few (results rows keep the full text).

    `request_error: HTTP 500 ...` → `request_error`; ESM's `wrong_name,value_mismatch` →
    `wrong_name` (ESM lists labels in the order name, required, key, type, value);
    `call_count:1!=2` → `call_count`.
    """
    return error_type.split(",")[0].split(":")[0].strip()


def _mean(values: list[Any]) -> float | None:
    """Mean of the non-null values (bools count 0/1); None when there are none."""
    xs = [float(v) for v in values if v is not None]
    return round(sum(xs) / len(xs), 6) if xs else None


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "esm": _mean([r["esm"] for r in rows]),
        "exact": _mean([r["exact"] for r in rows]),
        "ast": _mean([r["ast"] for r in rows]),
        "name_acc": _mean([r.get("name_acc") for r in rows]),
        "parse_rate": _mean([r.get("parsed") for r in rows]),
    }


def aggregate(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Run metrics from results rows.

    `n`; the mean of every `METRIC_COLUMNS` metric (`esm`, `exact`, `name_acc`,
    `parse_rate`, `ast`: over the rows where it applies; None when none does) and its 95%
    percentile bootstrap interval `<metric>_ci` = [lo, hi] (`ttpa_ray.eval.stats`, seeded
    by `seed`; None when the metric applies nowhere); `errors` {kind: count} (every row not
    `ok`, sorted by kind); `context_length_exceeded` (requests refused as longer than the
    context; also in `errors`); `by_category` {category: {n, esm, exact, ast, name_acc,
    parse_rate}} (sorted).
    """
    errors = Counter(error_kind(r["error_type"]) for r in rows if r["error_type"] != OK)
    buckets: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for cat in r.get("categories") or [r["category"]]:
            buckets.setdefault(cat, []).append(r)
    out: dict[str, Any] = _summary(rows)
    for metric, col in METRIC_COLUMNS.items():
        values = [r.get(col) for r in rows]
        out[metric] = _mean(values)
        out[f"{metric}_ci"] = bootstrap_ci(values, seed=seed)
    return {
        **out,
        "errors": dict(sorted(errors.items())),
        CONTEXT_LENGTH_EXCEEDED: errors.get(CONTEXT_LENGTH_EXCEEDED, 0),
        "by_category": {cat: _summary(rs) for cat, rs in sorted(buckets.items())},
    }
