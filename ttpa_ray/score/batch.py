"""ESM over Arrow batches: the pure function behind the Ray Data score stage."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ttpa_ray.score.esm import COMPONENTS, _reason, _score_calls

QUARANTINE_COL = "_quarantine_reason"
OUTPUT_COLS = ("esm_score", *(f"esm_{c}" for c in COMPONENTS), "esm_reason", QUARANTINE_COL)


def _pred_calls(value: Any) -> tuple[Any, str | None]:
    """A pred cell → calls. Strings may be a JSON call list or raw model text.

    Raw text goes through the `<tool_call>` parser; text without calls is a text-only
    answer (scores 0 as "no_call"); malformed blocks are recorded as the reason.
    """
    if not isinstance(value, str):
        return value, None
    text = value.strip()
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text), None
        except ValueError:
            pass
    from ttpa_ray.schema.tool_call_text import parse_tool_calls

    parsed = parse_tool_calls(value)
    if not parsed.tool_calls and parsed.errors:
        return [], "unparseable_tool_call:" + ";".join(parsed.errors)
    return parsed.tool_calls, None


class ESMBatchScorer:
    """Add ESM columns to an Arrow batch; one output row per input row, in order.

    Input columns (names configurable): `pred` (JSON call list, raw model text, or a list
    of call structs; null = no call), `gold` (same shapes, must hold valid calls), `tools`
    (JSON list of OpenAI tools, or the list). Adds `esm_score`, `esm_<component>`,
    `esm_reason`, and `_quarantine_reason` (non-null where a row cannot be scored: its
    gold or tools are missing or malformed). Rows are never dropped here: the Ray wiring
    splits the quarantined ones out, so the counts add up.
    """

    def __init__(self, pred_col: str = "pred", gold_col: str = "gold", tools_col: str = "tools"):
        self.cols = (pred_col, gold_col, tools_col)
        # The same tool lists recur across rows (every candidate of a turn); parse once.
        self._tools_cache: dict[str, Any] = {}

    @property
    def required_keys(self) -> tuple[str, str, str]:
        return self.cols

    def _tools(self, value: Any) -> tuple[Any, str | None]:
        if value is None:
            return None, "tools_missing"
        if not isinstance(value, str):
            return value, None
        hit = self._tools_cache.get(value)
        if hit is not None:
            return hit, None
        try:
            tools = json.loads(value)
        except ValueError:
            return None, "tools_not_json"
        if not isinstance(tools, list):
            return None, "tools_not_list"
        if len(self._tools_cache) > 10_000:
            self._tools_cache.clear()
        self._tools_cache[value] = tools
        return tools, None

    def score_row(self, pred: Any, gold: Any, tools: Any) -> tuple[Any, ...]:
        tool_list, q = self._tools(tools)
        if q is None and gold is None:
            q = "gold_missing"
        if q is not None:
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, q, q)
        calls, p_err = _pred_calls(pred)
        if p_err is not None:
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, p_err, None)
        parts, _ = _score_calls(calls, gold, tool_list)
        reason = _reason(parts)
        quarantine = reason if reason.startswith("gold_invalid") else None
        return (parts[5], *parts[:5], reason, quarantine)

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in self.cols if c not in batch.column_names]
        if missing:
            raise KeyError(f"ESM stage needs columns {list(self.cols)}; missing {missing}")
        columns = [batch.column(c).to_pylist() for c in self.cols]
        rows = [self.score_row(p, g, t) for p, g, t in zip(*columns, strict=True)]
        out = batch
        for i, name in enumerate(OUTPUT_COLS):
            kind = pa.string() if name in ("esm_reason", QUARANTINE_COL) else pa.float64()
            out = out.append_column(name, pa.array([r[i] for r in rows], type=kind))
        return out
