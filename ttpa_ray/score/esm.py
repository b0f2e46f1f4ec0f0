"""ESM, the Error-oriented Scoring Mechanism (TTPA §3.3; DESIGN §4).

One predicted call p against a gold call g, given the offered tools:

    score = (3·S_name + 3·S_required + 1·S_key + 2·S_type + 2·S_value) / 11

    S_name     = [p.name == g.name]
    S_required = share of the *gold* tool's `required` params present in p's arguments
                 (1 when none are required). The reference code looks the required params
                 up in the gold *arguments*; that never penalises a prediction, so we check
                 the prediction, as the paper's text says.
    D          = max(len(p.args), len(g.args))
    S_key      = (# p's argument names declared in the schema of p's tool) / D
    S_type     = (# p's arguments whose value has the declared JSON-Schema type) / D
    S_value    = Σ over p's args also in g: 1 if equal; for two unequal strings +0.5 if equal
                 ignoring case, +0.5 if one is a (non-empty) substring of the other; / D

Edge cases: no call → 0; both argument sets empty and names equal → 1; p's arguments
empty and g's not → 0; p names a tool that is not offered → S_key = S_type = 0. With
D = 0 and different names the argument terms are vacuous (1; key/type 0 for an unknown
tool). Parallel calls: predicted and gold calls are matched by the assignment maximising
the total score (Hungarian), and the total is divided by max(#pred, #gold).

Documented choices where the formula is silent:
- Types: JSON Schema semantics, strict about bools: a bool is neither integer nor number;
  an int is a number; a float with no fractional part is an integer (as JSON Schema says).
  A property without `type` accepts anything; `type` lists and `anyOf`/`oneOf` accept a
  value matching any branch; an unknown type name matches nothing. Only the top-level
  type of each argument is checked (nested values are S_value's business).
- Values: equality is deep and type-strict for bools (True ≠ 1) but 1 == 1.0.
- A gold tool that is not offered: its required params are taken to be the gold call's
  argument names (reason `gold_tool_unknown`).
- pred = [] and gold = [] (no call expected, none made) → 1.
- Never raises: malformed calls (no name, arguments not JSON / not an object) score 0
  with a reason; an invalid gold call scores 0 with reason `gold_invalid`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

W_NAME, W_REQUIRED, W_KEY, W_TYPE, W_VALUE = 3.0, 3.0, 1.0, 2.0, 2.0
W_TOTAL = W_NAME + W_REQUIRED + W_KEY + W_TYPE + W_VALUE
COMPONENTS = ("name", "required", "key", "type", "value")


def _loads(text: str) -> Any:
    """orjson (several times faster; parsing dominates batch scoring), json as fallback
    for what only the standard module accepts (NaN, Infinity, huge integers)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


# A parsed call: (name, arguments, error). error is None when the call is well formed.
_Call = tuple[str, dict[str, Any], None] | tuple[None, None, str]
# (required params of the tool, its `properties`)
_ToolInfo = tuple[list[str], dict[str, Any]]
# (S_name, S_required, S_key, S_type, S_value, score, edge-case reason or "")
_Parts = tuple[float, float, float, float, float, float, str]


def _parse_call(call: Any) -> _Call:
    """Flat `{"name","arguments"}` or OpenAI `{"function": {...}}` → (name, args, None)."""
    if not isinstance(call, dict):
        return None, None, f"call_not_object:{type(call).__name__}"
    fn = call.get("function", call)
    if not isinstance(fn, dict):
        return None, None, "function_not_object"
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None, None, "missing_name"
    args = fn.get("arguments", {})
    if type(args) is str:
        try:
            args = _loads(args) if args.strip() else {}
        except ValueError:
            return None, None, "arguments_not_json"
    if args is None:
        args = {}
    if type(args) is not dict:
        return None, None, f"arguments_not_object:{type(args).__name__}"
    return name, args, None


def _parse_calls(calls: Any) -> tuple[list[_Call], str | None]:
    """A call list (or one call, or its JSON) → parsed calls; error when the list is unusable."""
    if calls is None:
        return [], None
    if isinstance(calls, str):
        try:
            calls = _loads(calls) if calls.strip() else []
        except ValueError:
            return [], "calls_not_json"
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list | tuple):
        return [], f"calls_not_list:{type(calls).__name__}"
    return [_parse_call(c) for c in calls], None


def _tool_index(tools: Any, names: Any = None) -> dict[str, _ToolInfo]:
    """Required params and properties of the tools named in `names` (all when None;
    first definition of a name wins)."""
    out: dict[str, _ToolInfo] = {}
    if not isinstance(tools, list | tuple):
        return out
    for tool in tools:
        if type(tool) is not dict:
            continue
        fn = tool.get("function", tool)
        if type(fn) is not dict:
            continue
        name = fn.get("name")
        if type(name) is str and (names is None or name in names) and name not in out:
            params = fn.get("parameters")
            if type(params) is not dict:
                params = {}
            props = params.get("properties")
            req = params.get("required")
            out[name] = (
                # non-string entries of a malformed `required` can never be present
                [r for r in req if type(r) is str] if type(req) is list else [],
                props if type(props) is dict else {},
            )
    return out


def _is_type(t: Any, v: Any) -> bool:
    tv = type(v)
    if t == "string":
        return tv is str
    if t == "integer":
        return tv is int or (tv is float and v.is_integer())
    if t == "number":
        return tv is int or tv is float
    if t == "boolean":
        return tv is bool
    if t == "array":
        return tv is list or tv is tuple
    if t == "object":
        return tv is dict
    if t == "null":
        return v is None
    return False  # unknown type name: nothing matches it


def _type_ok(v: Any, schema: Any) -> bool:
    if type(schema) is not dict:
        return schema is True or schema == {}
    t = schema.get("type")
    if t is None:
        branches = schema.get("anyOf") or schema.get("oneOf")
        if type(branches) is list:
            return any(_type_ok(v, b) for b in branches)
        return True  # no declared type ("any")
    if type(t) is list:
        return any(_is_type(x, v) for x in t)
    return _is_type(t, v)


def _equal(a: Any, b: Any) -> bool:
    """Deep equality where a bool only equals a bool (Python's True == 1 is wrong here)."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta is dict:
        return tb is dict and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if ta is list or ta is tuple:
        return (tb is list or tb is tuple) and len(a) == len(b) and all(map(_equal, a, b))
    if (ta is int or ta is float) and (tb is int or tb is float):
        return bool(a == b)
    return ta is tb and bool(a == b)


def _value_score(a: Any, b: Any) -> float:
    if type(a) is str and type(b) is str:
        if a == b:
            return 1.0
        s = 0.5 if a.lower() == b.lower() else 0.0
        if a and b and (a in b or b in a):
            s += 0.5
        return s
    return 1.0 if _equal(a, b) else 0.0


_ZERO = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
_MISSING = object()  # a property schema may itself be None or {}; tell "absent" apart


def _score_one(p: _Call, g: _Call, idx: dict[str, _ToolInfo]) -> _Parts:
    """Components and score of one predicted call against one gold call."""
    if g[2] is not None:
        return (*_ZERO, f"gold_invalid:{g[2]}")
    if p[2] is not None:
        return (*_ZERO, p[2])
    p_name, pa = p[0], p[1]
    g_name, ga = g[0], g[1]
    assert pa is not None and ga is not None
    s_name = 1.0 if p_name == g_name else 0.0
    if not pa:
        if not ga and s_name:
            return 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, ""
        if ga:
            return s_name, 0.0, 0.0, 0.0, 0.0, 0.0, "pred_args_empty"
    reason = ""
    gold_tool = idx.get(g_name)  # type: ignore[arg-type]
    if gold_tool is not None:
        required: Any = gold_tool[0]
    else:
        required, reason = ga, "gold_tool_unknown"
    s_req = sum(1 for r in required if r in pa) / len(required) if required else 1.0
    d = len(pa) if len(pa) > len(ga) else len(ga)
    p_tool = idx.get(p_name)  # type: ignore[arg-type]
    if d == 0:
        vacuous = 0.0 if p_tool is None else 1.0
        s_key = s_type = vacuous
        s_val = 1.0
    else:
        n_key = n_type = 0
        n_val = 0.0
        props = p_tool[1] if p_tool is not None else None
        for k, v in pa.items():
            if props is not None:
                sch = props.get(k, _MISSING)
                if sch is not _MISSING:
                    n_key += 1
                    if _type_ok(v, sch):
                        n_type += 1
            if k in ga:
                n_val += _value_score(v, ga[k])
        s_key, s_type, s_val = n_key / d, n_type / d, n_val / d
    if p_tool is None:
        reason = "unknown_tool"
    score = (
        W_NAME * s_name + W_REQUIRED * s_req + W_KEY * s_key + W_TYPE * s_type + W_VALUE * s_val
    ) / W_TOTAL
    return s_name, s_req, s_key, s_type, s_val, score, reason


def _score_calls(pred: Any, gold: Any, tools: Any) -> tuple[_Parts, list[dict[str, Any]]]:
    """Aggregate components over the best matching, plus per-pair detail."""
    return _score_parsed(_parse_calls(pred), _parse_calls(gold), tools)


def _score_parsed(
    pred: tuple[list[_Call], str | None],
    gold: tuple[list[_Call], str | None],
    tools: Any,
    index: dict[str, _ToolInfo] | None = None,
) -> tuple[_Parts, list[dict[str, Any]]]:
    """`_score_calls` on calls already parsed; `index` (all tools, from `tool_index`)
    saves the per-call tool lookup when the same tool list scores many rows."""
    p_calls, p_err = pred
    g_calls, g_err = gold
    if g_err is not None:
        return (*_ZERO, f"gold_invalid:{g_err}"), []
    if p_err is not None:
        return (*_ZERO, p_err), []
    if not p_calls:
        return ((1.0,) * 6 + ("",) if not g_calls else (*_ZERO, "no_call")), []
    if not g_calls:
        return (*_ZERO, "unexpected_call"), []
    if index is not None:
        idx = index
    else:
        names = {c[0] for c in p_calls if c[0] is not None} | {c[0] for c in g_calls if c[0]}
        idx = _tool_index(tools, names)  # type: ignore[arg-type]
    if len(p_calls) == 1 and len(g_calls) == 1:
        parts = _score_one(p_calls[0], g_calls[0], idx)
        return parts, [{"pred": 0, "gold": 0, "score": parts[5]}]
    return _score_parallel(p_calls, g_calls, idx)


def _score_parallel(
    p_calls: list[_Call], g_calls: list[_Call], idx: dict[str, _ToolInfo]
) -> tuple[_Parts, list[dict[str, Any]]]:
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    table = [[_score_one(p, g, idx) for g in g_calls] for p in p_calls]
    scores = np.array([[cell[5] for cell in row] for row in table])
    rows, cols = linear_sum_assignment(scores, maximize=True)
    n = max(len(p_calls), len(g_calls))
    sums = [0.0] * 6
    reasons = []
    matches = []
    for i, j in zip(rows, cols, strict=True):
        cell = table[i][j]
        for k in range(6):
            sums[k] += cell[k]
        if cell[6]:
            reasons.append(cell[6])
        matches.append({"pred": int(i), "gold": int(j), "score": cell[5]})
    if len(p_calls) != len(g_calls):
        reasons.append(f"call_count:{len(p_calls)}!={len(g_calls)}")
    s_name, s_req, s_key, s_type, s_val, total = (x / n for x in sums)
    return (s_name, s_req, s_key, s_type, s_val, total, ",".join(dict.fromkeys(reasons))), matches


def esm_score(pred: Any, gold: Any, tools: Any) -> float:
    """ESM score in [0, 1] of predicted calls against gold calls (DESIGN §4); never raises.

    `pred`/`gold`: lists of `{"name": str, "arguments": dict | JSON string}` (the OpenAI
    `{"function": {...}}` shape, one bare call, or the list's JSON are accepted too).
    `tools`: OpenAI tool dicts (bare function dicts accepted).
    """
    try:
        return _score_calls(pred, gold, tools)[0][5]
    except Exception:  # noqa: BLE001 - the contract is "never raises"; keep a floor
        return 0.0


def _reason(parts: _Parts) -> str:
    """Why a score is below 1: the edge-case reason, else the components that fell short."""
    if parts[6]:
        return parts[6]
    if parts[5] >= 1.0:
        return ""
    labels = ("wrong_name", "missing_required", "unknown_key", "type_mismatch", "value_mismatch")
    return ",".join(label for label, v in zip(labels, parts[:5], strict=True) if v < 1.0)


def esm_breakdown(pred: Any, gold: Any, tools: Any) -> dict[str, Any]:
    """Components (`name, required, key, type, value`), `score`, `reason`, `matches`.

    For parallel calls each component is summed over the best matching and divided by
    max(#pred, #gold), like the score. `reason` is "" for a perfect call; otherwise the
    edge case met or the failing components (`wrong_name`, `missing_required`,
    `unknown_key`, `type_mismatch`, `value_mismatch`). Never raises.
    """
    try:
        parts, matches = _score_calls(pred, gold, tools)
    except Exception as e:  # noqa: BLE001 - never raise; report instead
        parts, matches = (*_ZERO, f"internal_error:{type(e).__name__}"), []
    out: dict[str, Any] = dict(zip(COMPONENTS, parts[:5], strict=True))
    out["score"] = parts[5]
    out["reason"] = _reason(parts)
    out["matches"] = matches
    return out
