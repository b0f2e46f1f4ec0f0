"""ESM over Arrow batches: the pure function behind the Ray Data score stage."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ttpa_ray.runner import QUARANTINE_COLUMN as QUARANTINE_COL
from ttpa_ray.schema.tool_call_text import parse_prediction
from ttpa_ray.score.esm import (
    COMPONENTS,
    _loads,
    _parse_calls,
    _reason,
    _score_parsed,
    _tool_index,
)

OUTPUT_COLS = ("esm_score", *(f"esm_{c}" for c in COMPONENTS), "esm_reason", QUARANTINE_COL)
PRED_FORMATS = ("calls", "text")  # what a `pred` cell holds; see `ESMBatchScorer`


def _text_calls(value: Any) -> tuple[Any, str | None]:
    """Model text → calls, through the parser evaluation uses (`parse_prediction`).

    Text without `<tool_call>` blocks (bare JSON included) is a text-only answer and scores
    0 as "no_call"; text whose only blocks are malformed records why as the reason.
    """
    if value is None:
        return [], None
    if not isinstance(value, str):
        return [], f"pred_not_text:{type(value).__name__}"
    calls, errors = parse_prediction(value)
    if not calls and errors:
        return [], "unparseable_tool_call:" + ";".join(errors)
    return calls, None


class ESMBatchScorer:
    """Add ESM columns to an Arrow batch; one output row per input row, in order.

    Input columns (names configurable): `pred` (null = no call), `gold` (a JSON call
    list or a list of call structs; must hold valid calls), `tools` (JSON list of OpenAI
    tools, or the list). `pred_format` says what `pred` holds, never guessed per row:
    "calls" (a JSON call list or call structs, like `gold`) or "text" (raw model output,
    read by `parse_prediction` exactly as evaluation reads it: only `<tool_call>` blocks
    are calls, so bare JSON scores 0). Adds `esm_score`, `esm_<component>`,
    `esm_reason`, and `_quarantine_reason` (non-null where a row cannot be scored: its
    gold or tools are missing or malformed). Rows are never dropped here: the Ray wiring
    splits the quarantined ones out, so the counts add up.
    """

    def __init__(
        self,
        pred_col: str = "pred",
        gold_col: str = "gold",
        tools_col: str = "tools",
        pred_format: str = "calls",
    ):
        if pred_format not in PRED_FORMATS:
            raise ValueError(f"unknown pred_format {pred_format!r}; expected one of {PRED_FORMATS}")
        self.cols = (pred_col, gold_col, tools_col)
        self.pred_format = pred_format
        # The same tool lists recur across rows (every candidate of a turn); parse once.
        self._tools_cache: dict[str, Any] = {}

    @property
    def required_keys(self) -> tuple[str, str, str]:
        return self.cols

    def _tools(self, value: Any) -> tuple[Any, str | None]:
        """A tools cell → ((tool list, its index), None) or (None, quarantine reason)."""
        if value is None:
            return None, "tools_missing"
        if not isinstance(value, str):
            return (value, _tool_index(value)), None
        hit = self._tools_cache.get(value)
        if hit is not None:
            return hit, None
        try:
            tools = _loads(value)
        except ValueError:
            return None, "tools_not_json"
        if not isinstance(tools, list):
            return None, "tools_not_list"
        if len(self._tools_cache) > 10_000:
            self._tools_cache.clear()
        self._tools_cache[value] = (tools, _tool_index(tools))
        return self._tools_cache[value], None

    def pred_calls(self, pred: Any) -> tuple[Any, str | None]:
        """A `pred` cell → (calls, None), or ([], reason) when it holds no usable calls."""
        if self.pred_format == "text":
            return _text_calls(pred)
        return pred, None

    def score_row(self, pred: Any, gold: Any, tools: Any) -> tuple[Any, ...]:
        """Output cells of one row (see `OUTPUT_COLS`)."""
        tool_list, q = self._tools(tools)
        return self._score(pred, _parse_calls(gold) if gold is not None else None, tool_list, q)

    def _score(self, pred: Any, gold: Any, tool_list: Any, q: str | None) -> tuple[Any, ...]:
        if q is None and gold is None:
            q = "gold_missing"
        if q is not None:
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, q, q)
        calls, p_err = self.pred_calls(pred)
        if p_err is not None:
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, p_err, None)
        parts, _ = _score_parsed(_parse_calls(calls), gold, tool_list[0], tool_list[1])
        reason = _reason(parts)
        quarantine = reason if reason.startswith("gold_invalid") else None
        return (parts[5], *parts[:5], reason, quarantine)

    @staticmethod
    def _encoded(column: pa.ChunkedArray) -> tuple[list[int | None], pa.Array]:
        """(per-row index into distinct values, the distinct values) of a string column.

        Gold calls and tool lists repeat across rows (every candidate of a turn, every
        turn of an episode): dictionary-encoding lets each distinct value be parsed once.
        A column that is dictionary-typed already (e.g. a slice of a larger dictionary)
        keeps its dictionary; values are converted lazily, only those the batch uses.
        """
        arr = column.combine_chunks()
        if not pa.types.is_dictionary(arr.type):
            if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
                return list(range(len(arr))), arr
            arr = arr.dictionary_encode()
        return arr.indices.to_pylist(), arr.dictionary

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in self.cols if c not in batch.column_names]
        if missing:
            raise KeyError(f"ESM stage needs columns {list(self.cols)}; missing {missing}")
        preds = batch.column(self.cols[0]).to_pylist()
        g_idx, g_vals = self._encoded(batch.column(self.cols[1]))
        t_idx, t_vals = self._encoded(batch.column(self.cols[2]))
        golds: dict[int, Any] = {}
        tools: dict[int, tuple[Any, str | None]] = {}
        rows = []
        for pred, gi, ti in zip(preds, g_idx, t_idx, strict=True):
            q: str | None
            if ti is None:
                tool_list, q = None, "tools_missing"
            else:
                if ti not in tools:
                    tools[ti] = self._tools(t_vals[ti].as_py())
                tool_list, q = tools[ti]
            gold = None
            if gi is not None:
                gold = golds.get(gi)
                if gold is None:
                    value = g_vals[gi].as_py()
                    gold = golds[gi] = _parse_calls(value) if value is not None else None
            rows.append(self._score(pred, gold, tool_list, q))
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(OUTPUT_COLS)
        out = batch
        for name, values in zip(OUTPUT_COLS, columns, strict=True):
            kind = pa.string() if name in ("esm_reason", QUARANTINE_COL) else pa.float64()
            out = out.append_column(name, pa.array(values, type=kind))
        return out
