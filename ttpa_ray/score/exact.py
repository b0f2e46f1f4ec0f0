"""Exact-call matching: the same calls as a multiset, arguments compared as JSON values.

Evaluation's exact-call accuracy and GRPO's `exact` reward use these, so the two cannot
disagree on what an exactly right answer is.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any


def _json_value(v: Any) -> Any:
    """Canonical form of a JSON value: integral floats become ints (JSON has one number
    type), tuples lists; bools stay bools (`json.dumps` keeps `true` apart from `1`)."""
    if isinstance(v, bool) or v is None or isinstance(v, str | int):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else v
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def call_key(call: dict[str, Any]) -> str:
    """A flat call as one canonical string (name + arguments as sorted JSON)."""
    return json.dumps(
        [call.get("name"), _json_value(call.get("arguments") or {})],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )


def exact_match(pred: list[dict[str, Any]], gold: list[dict[str, Any]]) -> bool:
    """Same calls as a multiset (order-insensitive, arguments compared as JSON values)."""
    return Counter(map(call_key, pred)) == Counter(map(call_key, gold))


def names_match(pred: list[dict[str, Any]], gold: list[dict[str, Any]]) -> bool:
    """Same tool names as a multiset (arguments ignored)."""
    return Counter(c.get("name") for c in pred) == Counter(c.get("name") for c in gold)
