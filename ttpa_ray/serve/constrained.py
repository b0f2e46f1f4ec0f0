"""Constrained tool-call decoding for `tool_choice="required"` or a named function.

The completion is forced, token by token, to be exactly::

    <tool_call>\\n{"name": "<fn>", "arguments": {...}}\\n</tool_call><eos>

(one block, or 1..`max_parallel_calls` blocks joined by "\\n" when parallel calls are
allowed), where the JSON is valid for the chosen tool's `parameters` and printed in the
canonical separators of `ttpa_ray.schema.tool_call_text` (`", "`, `": "`, no other
whitespace, keys in schema order). The grammar engine is xgrammar (JSON Schema →
grammar → per-step token bitmask); this module only builds the schema, bounds it, wraps
it in the `<tool_call>` frame and drives one matcher per batch row.

Bounding (`bound_schema`): an untrained or confused model may never close a string, so
every schema is rewritten into a *finite* language (a tightening: everything the bounded
schema accepts, the original accepts too, except where listed under "Limits"):

* strings: a plain string gets `maxLength` = `SchemaLimits.max_string_length` when it
  has none, and its characters exclude quote, backslash, control characters (xgrammar's
  own `maxLength` rule lets raw ones through, which is not JSON) and "<" (so no value
  holds `<tool_call>`/`</tool_call>`, which the block parser splits on); a `pattern`
  has its unbounded quantifiers (`*`, `+`, `{n,}`) capped at `max_string_length`; the
  formats date, date-time, time, email, idn-email, uri, uuid, ipv4 and hostname become
  bounded patterns that pass the `jsonschema` format checker (February stops at day 28,
  years are 1000-9999);
* numbers/integers stay JSON numbers; a missing `minimum`/`maximum` is set to
  ∓(10**max_number_digits - 1) (xgrammar then also caps fractions at 6 digits and drops
  exponents);
* arrays: `maxItems` defaults to `SchemaLimits.max_items`; `uniqueItems` over an
  enum/const/boolean item becomes the list of its strictly ordered subsets (when at most
  `max_unique_combinations`), otherwise `maxItems` drops to `max(1, minItems)`;
* objects: declared `properties` keep their order, `required` and optional omission; an
  object with `properties` admits no other keys (xgrammar strict mode); one without
  (`{"type": "object"}`, `additionalProperties: true`/schema) is a map of at most
  `max_properties` bounded keys; free values (`{}`, missing type) are scalars
  (string | number | boolean | null);
* `enum`/`const` are kept as they are; `anyOf`/`oneOf`/type lists become `anyOf`;
  `allOf` is merged shallowly; local `$ref`s are inlined (recursion is refused).

Budget: the bounded grammar has a longest sentence, so `ToolCallGrammar.min_new_tokens`
(bytes of that sentence + 1 for eos; a token is at least one byte) guarantees the
grammar terminates within `max_new_tokens >= min_new_tokens`. With fewer tokens the row
may stop unfinished: `finish_reason` then says "length" and `generate_constrained`
raises `ToolCallBudgetExceeded`; a half-built call is never returned as a tool call.

Limits. Not enforced: `oneOf` exclusivity, `multipleOf`, `not`, `if`/`then`,
`patternProperties`, `dependentRequired`, a `maxLength` beside a `pattern`/`format`,
`uniqueItems` with `minItems >= 2` over non-enumerable items; a user `pattern` may let
"<" into a value. Refused with ValueError: a recursive or non-local `$ref`, a pattern
xgrammar cannot compile (e.g. one item repeated more than ~128 times).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import torch
import xgrammar as xgr
from transformers import LogitsProcessor, LogitsProcessorList

try:  # Python ≥ 3.11 moved the regex parser; only its width computation is used.
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

from ttpa_ray.schema.tool_call_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

BLOCK_OPEN = TOOL_CALL_OPEN + "\n"
BLOCK_CLOSE = "\n" + TOOL_CALL_CLOSE
BLOCK_SEPARATOR = "\n"
# xgrammar's bounded numbers carry at most 6 fraction digits.
_NUMBER_FRACTION_DIGITS = 6
# A string character in these grammars is one unescaped code point (`maxLength` classes
# and patterns exclude the backslash): at most 4 UTF-8 bytes, each at least one token.
_MAX_CHAR_BYTES = 4
_UNBOUNDED_WIDTH = 10**7

FinishReason = Literal["tool_calls", "length", "error"]


class ToolCallBudgetExceeded(RuntimeError):
    """The token budget ran out before the tool call was complete (finish_reason "length").

    `text` is the partial completion (not a valid call); `min_new_tokens` the budget that
    would have guaranteed completion.
    """

    finish_reason = "length"

    def __init__(self, text: str, max_new_tokens: int, min_new_tokens: int) -> None:
        super().__init__(
            f"tool call unfinished after {max_new_tokens} new tokens "
            f"(completion guaranteed from {min_new_tokens})"
        )
        self.text = text
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens


@dataclass(frozen=True)
class SchemaLimits:
    """Caps that make a tool schema a finite language (see the module docstring).

    `clamp_explicit` also lowers an explicit `maxLength`/`maxItems` above the caps
    (shorter outputs and budgets, e.g. for tests; values the schema allows are lost).
    """

    max_string_length: int = 64
    max_items: int = 8
    max_properties: int = 8
    max_number_digits: int = 9
    max_unique_combinations: int = 256
    max_ref_depth: int = 8
    max_parallel_calls: int = 4
    clamp_explicit: bool = False


DEFAULT_LIMITS = SchemaLimits()

# --- Schemas ---------------------------------------------------------------------------------


def _function_spec(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else tool


def is_constraining(tool_choice: Any) -> bool:
    """Whether `tool_choice` forces a call ("required" or a named function)."""
    return tool_choice == "required" or (
        isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping)
    )


def _branch(spec: Mapping[str, Any]) -> dict[str, Any]:
    params = spec.get("parameters")
    if not isinstance(params, Mapping) or not params:
        # No declared parameters: the call takes none.
        params = {"type": "object", "properties": {}, "additionalProperties": False}
    return {
        "type": "object",
        "properties": {"name": {"const": spec["name"]}, "arguments": copy.deepcopy(dict(params))},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def call_schema(tools: Sequence[Mapping[str, Any]], tool_choice: Any) -> dict[str, Any]:
    """JSON Schema of ONE call object `{"name": ..., "arguments": ...}` that `tool_choice`
    allows: "required" → `anyOf` over every offered tool; `{"type": "function",
    "function": {"name": X}}` → only X. Unbounded (see `bound_schema`).

    Raises ValueError when the choice does not force a call, no tools are offered, or the
    named function is not among them.
    """
    specs: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        spec = _function_spec(tool)
        name = spec.get("name")
        if isinstance(name, str) and name and name not in specs:  # first definition wins
            specs[name] = spec
    if not specs:
        raise ValueError("tool_choice requires a tool call but no tools are offered")
    if tool_choice == "required":
        branches = [_branch(s) for s in specs.values()]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}
    if is_constraining(tool_choice):
        name = tool_choice["function"].get("name")
        if name not in specs:
            raise ValueError(
                f"tool_choice names function {name!r}, which is not among the offered tools "
                f"({', '.join(sorted(specs))})"
            )
        return _branch(specs[name])
    raise ValueError(f"tool_choice {tool_choice!r} does not force a tool call")


_DATE = (
    r"[1-9][0-9]{3}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    r"|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
)
_TIME = (
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
_LABEL = r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_EMAIL = r"[A-Za-z0-9._%+-]{1,32}@" + _LABEL + r"(\.[a-z]{2,8}){1,2}"
# Each pattern is bounded and its strings pass jsonschema's FORMAT_CHECKER.
FORMAT_PATTERNS: dict[str, str] = {
    "date": f"^{_DATE}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "time": f"^{_TIME}$",
    "email": f"^{_EMAIL}$",
    "idn-email": f"^{_EMAIL}$",
    "uri": r"^https?://" + _LABEL + r"(\." + _LABEL + r"){0,3}(/[A-Za-z0-9._~-]{1,32}){0,4}$",
    "uuid": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    "ipv4": rf"^{_OCTET}(\.{_OCTET}){{3}}$",
    "hostname": f"^{_LABEL}(\\.{_LABEL}){{0,3}}$",
}


def bound_pattern(pattern: str, cap: int) -> str:
    """`pattern` with every unbounded quantifier (`*`, `+`, `{n,}`) capped at `cap`.

    Character classes and escapes are copied untouched. Raises ValueError if the result
    is not a regex Python can parse.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            # "]" right after "[" or "[^" is a literal, not the end of the class.
            for lead in ("^", "]"):
                if pattern.startswith(lead, i):
                    out.append(lead)
                    i += 1
            continue
        m = re.match(r"\{(\d+),\}", pattern[i:]) if c == "{" else None
        if m:
            n = int(m[1])
            out.append(f"{{{n},{max(n, cap)}}}")
            i += m.end()
            continue
        out.append({"*": f"{{0,{cap}}}", "+": f"{{1,{cap}}}"}.get(c, c))
        i += 1
    bounded = "".join(out)
    try:
        re.compile(bounded)
    except re.error as e:
        raise ValueError(f"unsupported pattern {pattern!r}: {e}") from None
    return bounded


def _pattern_width(pattern: str) -> int:
    """Most characters a string fully matching `pattern` can have."""
    hi = int(_sre_parse.parse(pattern).getwidth()[1])
    if hi >= _UNBOUNDED_WIDTH:
        raise ValueError(f"pattern {pattern!r} is unbounded")
    return hi


def _cap(given: Any, cap: int, floor: int, limits: SchemaLimits) -> int:
    """The bound to use: `given` when set (lowered to `cap` if `clamp_explicit`), else
    `cap`; never below `floor` (the schema's own minimum)."""
    if isinstance(given, int) and not isinstance(given, bool) and given >= 0:
        value = min(given, cap) if limits.clamp_explicit else given
    else:
        value = cap
    return max(value, floor)


class _Bounder:
    def __init__(self, root: Any, limits: SchemaLimits) -> None:
        self.root = root
        self.limits = limits

    def any_scalar(self) -> dict[str, Any]:
        return {
            "anyOf": [
                self.string({}),
                self.number({"type": "number"}),
                {"type": "boolean"},
                {"type": "null"},
            ]
        }

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"unresolvable $ref {ref!r}")
            node = node[part]
        return node

    def bound(self, node: Any, depth: int = 0) -> Any:
        if node is False:
            return False
        if not isinstance(node, Mapping):
            return self.any_scalar()
        node = dict(node)
        if "$ref" in node:
            if depth >= self.limits.max_ref_depth:
                raise ValueError(
                    f"$ref nesting deeper than {self.limits.max_ref_depth}: recursive schemas "
                    "cannot be bounded"
                )
            target = self.resolve(node.pop("$ref"))
            merged = {**target, **node} if isinstance(target, Mapping) else target
            return self.bound(merged, depth + 1)
        for key in ("$defs", "definitions", "$schema", "$id", "title", "description", "default"):
            node.pop(key, None)
        if "const" in node:
            return {"const": node["const"]}
        if "enum" in node:
            return {"enum": list(node["enum"])}
        if "allOf" in node:
            return self.bound(_merge_all_of(node), depth)
        for key in ("anyOf", "oneOf"):
            if key in node:
                branches = node.pop(key)
                return {"anyOf": [self.bound({**node, **b}, depth) for b in branches]}
        kind = node.get("type")
        if isinstance(kind, list):
            if len(kind) == 1:
                kind = kind[0]
            else:
                return {"anyOf": [self.bound({**node, "type": k}, depth) for k in kind]}
        if kind is None:
            kind = _infer_type(node)
        if kind == "object":
            return self.object(node, depth)
        if kind == "array":
            return self.array(node, depth)
        if kind == "string":
            return self.string(node)
        if kind in ("integer", "number"):
            return self.number({**node, "type": kind})
        if kind in ("boolean", "null"):
            return {"type": kind}
        return self.any_scalar()

    def string(self, node: Mapping[str, Any]) -> dict[str, Any]:
        cap = self.limits.max_string_length
        pattern = node.get("pattern")
        fmt = node.get("format")
        if isinstance(pattern, str):
            return {"type": "string", "pattern": bound_pattern(pattern, cap)}
        if isinstance(fmt, str) and fmt in FORMAT_PATTERNS:
            return {"type": "string", "pattern": FORMAT_PATTERNS[fmt]}
        lo = node.get("minLength", 0)
        lo = lo if isinstance(lo, int) and lo > 0 else 0
        hi = _cap(node.get("maxLength"), cap, lo, self.limits)
        # Not a pattern: xgrammar's regexes blow up beyond ~128 repetitions, its
        # `maxLength` rules do not (their character class is fixed in `_json_grammar`).
        return {"type": "string", "minLength": lo, "maxLength": hi}

    def number(self, node: Mapping[str, Any]) -> dict[str, Any]:
        kind = node["type"]
        span = 10**self.limits.max_number_digits - 1
        out: dict[str, Any] = {"type": kind}
        lo_key = "exclusiveMinimum" if _is_num(node.get("exclusiveMinimum")) else "minimum"
        hi_key = "exclusiveMaximum" if _is_num(node.get("exclusiveMaximum")) else "maximum"
        lo, hi = node.get(lo_key), node.get(hi_key)
        lo = lo if _is_num(lo) else None
        hi = hi if _is_num(hi) else None
        if kind == "integer":
            # Inclusive integer bounds: xgrammar's integer ranges are built from them.
            if lo is not None:
                lo = math.floor(lo) + 1 if lo_key == "exclusiveMinimum" else math.ceil(lo)
            if hi is not None:
                hi = math.ceil(hi) - 1 if hi_key == "exclusiveMaximum" else math.floor(hi)
            lo_key, hi_key = "minimum", "maximum"
        if lo is None:
            lo = -span if hi is None or hi > -span else hi - span
            lo_key = "minimum"
        if hi is None:
            hi = span if lo < span else lo + span
            hi_key = "maximum"
        out[lo_key], out[hi_key] = lo, hi
        return out

    def array(self, node: Mapping[str, Any], depth: int) -> dict[str, Any]:
        lim = self.limits
        items = node.get("items")
        prefix = node.get("prefixItems")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, node.get("additionalItems", {})
        lo = node.get("minItems", 0)
        lo = lo if isinstance(lo, int) and lo > 0 else 0
        hi = _cap(node.get("maxItems"), lim.max_items, lo, lim)
        out: dict[str, Any] = {"type": "array"}
        bounded_items = False if items is False else self.bound(items or {}, depth)
        if isinstance(prefix, list):
            out["prefixItems"] = [self.bound(p, depth) for p in prefix]
            hi = max(hi, min(len(prefix), lo)) if bounded_items is False else hi
        if node.get("uniqueItems") is True and not prefix:
            unique = self.unique(bounded_items, lo, hi)
            if unique is not None:
                return unique
            hi = max(1, lo)  # at most one item is always unique
        out["items"] = bounded_items
        if lo:
            out["minItems"] = lo
        out["maxItems"] = hi
        return out

    def unique(self, items: Any, lo: int, hi: int) -> dict[str, Any] | None:
        """Arrays of distinct values of an enumerable item schema, as ordered subsets."""
        if not isinstance(items, Mapping):
            return None
        if "const" in items:
            values = [items["const"]]
        elif "enum" in items:
            values = list(items["enum"])
        elif items.get("type") == "boolean":
            values = [False, True]
        else:
            return None
        distinct = list({json.dumps(v, sort_keys=True): v for v in values}.values())
        hi = min(hi, len(distinct))
        total = sum(math.comb(len(distinct), n) for n in range(lo, hi + 1))
        if lo > hi or total > self.limits.max_unique_combinations:
            return None
        branches: list[dict[str, Any]] = []
        for n in range(lo, hi + 1):
            for combo in itertools.combinations(distinct, n):
                branch: dict[str, Any] = {"type": "array", "items": False}
                if n:
                    branch |= {"prefixItems": [{"const": v} for v in combo], "minItems": n}
                branch["maxItems"] = n
                branches.append(branch)
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    def object(self, node: Mapping[str, Any], depth: int) -> dict[str, Any]:
        lim = self.limits
        props = node.get("properties")
        extra = node.get("additionalProperties")
        required = [r for r in node.get("required") or [] if isinstance(r, str)]
        free = (
            not props
            and not required
            and (extra is True or isinstance(extra, Mapping) or (props is None and extra is None))
        )
        if not free:
            props = props if isinstance(props, Mapping) else {}
            out_props = {k: self.bound(v, depth) for k, v in props.items()}
            for name in required:  # required but undeclared: the value is free
                if name not in out_props:
                    out_props[name] = self.bound(extra if isinstance(extra, Mapping) else {}, depth)
            out: dict[str, Any] = {"type": "object", "properties": out_props}
            if required:
                out["required"] = list(dict.fromkeys(required))
            # Declared properties only (xgrammar strict mode): other keys are never needed.
            out["additionalProperties"] = False
            return out
        # A free map: bounded keys and values, bounded count.
        lo = node.get("minProperties", 0)
        lo = lo if isinstance(lo, int) and lo > 0 else 0
        names = node.get("propertyNames")
        out = {
            "type": "object",
            "additionalProperties": self.bound(extra if isinstance(extra, Mapping) else {}, depth),
            "propertyNames": self.string(
                {**(names if isinstance(names, Mapping) else {}), "minLength": 1}
            ),
            "maxProperties": _cap(node.get("maxProperties"), lim.max_properties, lo, lim),
        }
        if lo:
            out["minProperties"] = lo
        return out


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _infer_type(node: Mapping[str, Any]) -> str | None:
    if any(k in node for k in ("properties", "additionalProperties", "propertyNames")):
        return "object"
    if any(k in node for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in node for k in ("pattern", "format", "minLength", "maxLength")):
        return "string"
    if any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return None


def _merge_all_of(node: Mapping[str, Any]) -> dict[str, Any]:
    """Shallow merge of `allOf` branches into the node (properties and required unioned)."""
    merged = {k: v for k, v in node.items() if k != "allOf"}
    for part in node["allOf"]:
        if not isinstance(part, Mapping):
            continue
        for k, v in part.items():
            if k == "properties" and isinstance(merged.get(k), Mapping):
                merged[k] = {**merged[k], **v}
            elif k == "required" and isinstance(merged.get(k), list):
                merged[k] = [*merged[k], *v]
            else:
                merged[k] = v
    return merged


def bound_schema(schema: Mapping[str, Any], limits: SchemaLimits = DEFAULT_LIMITS) -> Any:
    """A finite-language version of `schema` that xgrammar compiles (module docstring).

    Raises ValueError for a recursive or non-local `$ref` or an unparsable pattern.
    """
    return _Bounder(schema, limits).bound(schema)


def _json_bytes(value: Any) -> int:
    return max(
        len(json.dumps(value, ensure_ascii=a, separators=(", ", ": ")).encode())
        for a in (False, True)
    )


def _number_bytes(node: Mapping[str, Any]) -> int:
    bounds = [
        node[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in node
    ]
    magnitude = max(abs(b) for b in bounds)
    integer_digits = len(str(int(magnitude)))
    if node["type"] == "integer":
        return 1 + integer_digits
    decimals = max(-int(Decimal(repr(float(b))).as_tuple().exponent) for b in bounds)
    return 1 + integer_digits + 1 + max(_NUMBER_FRACTION_DIGITS, decimals)


def max_json_bytes(schema: Any) -> int:
    """UTF-8 bytes of the longest JSON text a *bounded* schema admits (an upper bound).

    Raises ValueError for a schema `bound_schema` would not produce.
    """
    if schema is False:
        return 0
    if not isinstance(schema, Mapping):
        raise ValueError(f"not a bounded schema: {schema!r}")
    if "const" in schema:
        return _json_bytes(schema["const"])
    if "enum" in schema:
        return max((_json_bytes(v) for v in schema["enum"]), default=0)
    if "anyOf" in schema:
        return max((max_json_bytes(b) for b in schema["anyOf"]), default=0)
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return 2 + _MAX_CHAR_BYTES * _pattern_width(schema["pattern"])
        return 2 + _MAX_CHAR_BYTES * int(schema["maxLength"])
    if kind in ("integer", "number"):
        return _number_bytes(schema)
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "array":
        prefix = [max_json_bytes(p) for p in schema.get("prefixItems", [])]
        n = schema["maxItems"]
        item = max_json_bytes(schema.get("items", False))
        sizes = prefix[:n] + [item] * max(0, n - len(prefix))
        return 2 + sum(sizes) + 2 * max(0, len(sizes) - 1)
    if kind == "object":
        entries = [
            _json_bytes(k) + 2 + max_json_bytes(v) for k, v in schema.get("properties", {}).items()
        ]
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            key = max_json_bytes(schema["propertyNames"])
            entries += [key + 2 + max_json_bytes(extra)] * schema["maxProperties"]
        return 2 + sum(entries) + 2 * max(0, len(entries) - 1)
    raise ValueError(f"not a bounded schema: {schema!r}")


# --- Grammars --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallGrammar:
    """A compiled `<tool_call>` grammar and what it guarantees.

    schema: the bounded JSON Schema of one call object. max_calls: most blocks it admits.
    min_new_tokens: a budget that always suffices (longest sentence in bytes + eos).
    """

    compiled: xgr.CompiledGrammar
    schema: Any
    max_calls: int
    min_new_tokens: int


# xgrammar 0.2's rule for `maxLength` strings: any character but quote, backslash, CR,
# LF. It lets raw control characters (tab, NUL...) through, which JSON forbids, so the
# class is replaced: no control characters, and no "<" either, so that no value can
# contain `<tool_call>` / `</tool_call>` (the parser splits blocks on those strings).
_LOOSE_CHARS = r"(([^\"\\\r\n]))"
_JSON_CHARS = r"(([^\0-\x1f\"\\<]))"


def _json_grammar(schema: Any) -> str:
    """EBNF of one JSON value of the bounded `schema`, in the canonical separators of
    `render_tool_call` with no free whitespace (short, and byte-identical to training)."""
    grammar = xgr.Grammar.from_json_schema(
        json.dumps(schema), any_whitespace=False, separators=(", ", ": "), strict_mode=True
    )
    return str(grammar).replace(_LOOSE_CHARS, _JSON_CHARS)


def _compile_call_grammar(
    compiler: xgr.GrammarCompiler, schema: Any, max_calls: int
) -> xgr.CompiledGrammar:
    from xgrammar import structural_tag as st

    block = st.TagFormat(
        begin=BLOCK_OPEN, content=st.GrammarFormat(grammar=_json_grammar(schema)), end=BLOCK_CLOSE
    )
    elements: list[Any] = [block]
    if max_calls > 1:
        more = st.SequenceFormat(elements=[st.ConstStringFormat(value=BLOCK_SEPARATOR), block])
        elements.append(st.RepeatFormat(min=0, max=max_calls - 1, content=more))
    tag = st.StructuralTag(format=st.SequenceFormat(elements=elements))
    return compiler.compile_structural_tag(tag)


class ConstraintCompiler:
    """Compiles and caches tool-call grammars for one tokenizer (thread-safe).

    The cache key is (tools JSON, tool_choice JSON, max calls, limits): the same tool
    lists recur across requests. `compile_count` counts actual compilations.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int | None = None,
        *,
        stop_token_ids: Sequence[int] | None = None,
        cache_size: int = 256,
    ) -> None:
        stops = list(stop_token_ids) if stop_token_ids else [int(tokenizer.eos_token_id)]
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stops
        )
        self.vocab_size = int(self.tokenizer_info.vocab_size)
        self.stop_token_ids = stops
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info)
        self._cache: OrderedDict[str, ToolCallGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.compile_count = 0

    def compile(
        self,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: Any,
        *,
        parallel_tool_calls: bool = False,
        limits: SchemaLimits = DEFAULT_LIMITS,
    ) -> ToolCallGrammar:
        """The grammar for `tool_choice` over `tools` (cached). Raises ValueError like
        `call_schema` / `bound_schema`."""
        max_calls = limits.max_parallel_calls if parallel_tool_calls else 1
        key = json.dumps(
            [list(tools), tool_choice, max_calls, repr(limits)], sort_keys=True, default=str
        )
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        schema = bound_schema(call_schema(tools, tool_choice), limits)
        block = len(BLOCK_OPEN.encode()) + max_json_bytes(schema) + len(BLOCK_CLOSE.encode())
        budget = max_calls * block + (max_calls - 1) * len(BLOCK_SEPARATOR) + 1
        try:
            compiled = _compile_call_grammar(self._compiler, schema, max_calls)
        except RuntimeError as e:  # e.g. a pattern xgrammar cannot turn into an automaton
            raise ValueError(f"tool schema not supported by constrained decoding: {e}") from e
        grammar = ToolCallGrammar(
            compiled=compiled,
            schema=schema,
            max_calls=max_calls,
            min_new_tokens=budget,
        )
        with self._lock:
            self.compile_count += 1
            self._cache[key] = grammar
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return grammar


_COMPILERS: weakref.WeakKeyDictionary[Any, dict[int, ConstraintCompiler]] = (
    weakref.WeakKeyDictionary()
)
_COMPILERS_LOCK = threading.Lock()


def get_compiler(tokenizer: Any, vocab_size: int | None = None) -> ConstraintCompiler:
    """The shared `ConstraintCompiler` of `tokenizer` (one per vocab size), so its grammar
    cache lives as long as the tokenizer."""
    size = int(vocab_size) if vocab_size is not None else len(tokenizer)
    with _COMPILERS_LOCK:
        try:
            per_size = _COMPILERS.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable or not hashable: no sharing
            return ConstraintCompiler(tokenizer, size)
        if size not in per_size:
            per_size[size] = ConstraintCompiler(tokenizer, size)
        return per_size[size]


# --- Decoding --------------------------------------------------------------------------------


@dataclass
class ToolCallConstraint(LogitsProcessor):
    """Masks logits so each constrained row can only produce its tool-call grammar + eos.

    One xgrammar matcher per batch row; rows whose grammar is None are left untouched.
    Works as a `model.generate(logits_processor=...)` processor and from a manual loop:
    call it with the ids so far (prompt + generated, any left padding) and the next-token
    logits; the last column of `input_ids` is taken as the token chosen after the previous
    call. One instance per generation (it is stateful). Beam search and
    `num_return_sequences > 1` are not supported (the batch size must match).
    """

    grammars: list[ToolCallGrammar | None]
    vocab_size: int
    eos_token_id: int
    matchers: list[xgr.GrammarMatcher | None] = field(init=False)
    rejected: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.matchers = [xgr.GrammarMatcher(g.compiled) if g else None for g in self.grammars]
        self.rejected = [False] * len(self.grammars)
        self._bitmask = xgr.allocate_token_bitmask(len(self.grammars), self.vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != len(self.grammars):
            raise ValueError(
                f"batch of {input_ids.shape[0]} rows for a constraint built for "
                f"{len(self.grammars)} (beam search / num_return_sequences unsupported)"
            )
        active = [(i, m) for i, m in enumerate(self.matchers) if m is not None]
        if self._started:
            for i, m in active:
                if m.is_terminated() or self.rejected[i]:
                    continue  # finished rows are padded by generate(); nothing to accept
                if not m.accept_token(int(input_ids[i, -1])):
                    # Only possible if something after us unmasked a token: stop the row.
                    self.rejected[i] = True
        self._started = True
        live = [(i, m) for i, m in active if not (self.rejected[i] or m.is_terminated())]
        dead = [i for i, _ in active if self.rejected[i]]
        if live:
            for i, m in live:
                m.fill_next_token_bitmask(self._bitmask, i)
            rows = [i for i, _ in live]
            width = min(scores.shape[-1], self.vocab_size)
            if scores.device.type == "cuda":
                mask = self._bitmask.to(scores.device, non_blocking=True)
                xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=width, indices=rows)
            else:
                # xgrammar's CPU kernel wants float32 logits on the host.
                host = scores if scores.dtype == torch.float32 else scores.float()
                xgr.apply_token_bitmask_inplace(host, self._bitmask, vocab_size=width, indices=rows)
                if host is not scores:
                    scores.copy_(host)
            if scores.shape[-1] > width:  # lm_head padding beyond the grammar's vocabulary
                scores[rows, width:] = -math.inf
        for i in dead:
            scores[i, :] = -math.inf
            scores[i, self.eos_token_id] = 0.0
        return scores

    def finish_reason(self, row: int, generated_ids: Sequence[int]) -> FinishReason | None:
        """How row `row` ended, from its generated ids (prompt excluded; trailing padding
        after eos is ignored): "tool_calls" (complete, eos accepted), "length" (budget
        ran out mid-grammar) or "error" (a token off the grammar). None if unconstrained.

        Checked on a fresh matcher, so it also covers the last token, which `generate()`
        samples without calling the processor again.
        """
        grammar = self.grammars[row]
        if grammar is None:
            return None
        return _replay(grammar, generated_ids)


def _replay(grammar: ToolCallGrammar, generated_ids: Sequence[int]) -> FinishReason:
    matcher = xgr.GrammarMatcher(grammar.compiled)
    for token in generated_ids:
        if matcher.is_terminated():
            break  # padding after eos
        if not matcher.accept_token(int(token)):
            return "error"
    return "tool_calls" if matcher.is_terminated() else "length"


RowSpec = tuple[Sequence[Mapping[str, Any]], Any] | tuple[Sequence[Mapping[str, Any]], Any, bool]


def build_logits_processor(
    tokenizer: Any,
    vocab_size: int,
    per_row: Sequence[RowSpec | None],
    *,
    parallel_tool_calls: bool = False,
    limits: SchemaLimits = DEFAULT_LIMITS,
    compiler: ConstraintCompiler | None = None,
) -> ToolCallConstraint:
    """A `ToolCallConstraint` for a batch: `per_row[i]` is `(tools, tool_choice)` (or
    `(tools, tool_choice, parallel_tool_calls)`) or None for an unconstrained row; a
    choice that does not force a call ("auto", "none", None) also leaves the row free.

    `vocab_size` is the model's logits width (`model.config.vocab_size`). Grammars come
    from `compiler` (default: the tokenizer's shared one), so repeated tool lists compile
    once. Raises ValueError when a row names a function that is not offered.
    """
    compiler = compiler or get_compiler(tokenizer, vocab_size)
    grammars: list[ToolCallGrammar | None] = []
    for spec in per_row:
        if spec is None or not is_constraining(spec[1]):
            grammars.append(None)
            continue
        parallel = bool(spec[2]) if len(spec) > 2 else parallel_tool_calls  # type: ignore[misc]
        grammars.append(
            compiler.compile(spec[0], spec[1], parallel_tool_calls=parallel, limits=limits)
        )
    return ToolCallConstraint(
        grammars=grammars,
        vocab_size=compiler.vocab_size,
        eos_token_id=compiler.stop_token_ids[0],
    )


def generate_constrained(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    tool_choice: Any,
    max_new_tokens: int,
    *,
    parallel_tool_calls: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    limits: SchemaLimits = DEFAULT_LIMITS,
) -> str:
    """Generate one constrained completion (chat template with `tools`, generation prompt).

    Returns the text without eos: one or more `<tool_call>` blocks, each a schema-valid
    call of an allowed tool. Raises ValueError for a bad `tool_choice` and
    `ToolCallBudgetExceeded` when `max_new_tokens` ran out first (always avoided with
    `max_new_tokens >= ToolCallGrammar.min_new_tokens`). Sampling with `seed` does not
    disturb the global torch RNG.
    """
    prompt = tokenizer.apply_chat_template(
        list(messages), tools=list(tools), add_generation_prompt=True, tokenize=False
    )
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)
    vocab_size = int(model.config.vocab_size)
    processor = build_logits_processor(
        tokenizer,
        vocab_size,
        [(tools, tool_choice)],
        parallel_tool_calls=parallel_tool_calls,
        limits=limits,
    )
    kwargs: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        kwargs |= {"temperature": temperature, "top_p": top_p}
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=enc["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([processor]),
            eos_token_id=processor.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    new_ids = out[0, input_ids.shape[1] :].tolist()
    reason = processor.finish_reason(0, new_ids)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if reason == "length":
        grammar = processor.grammars[0]
        assert grammar is not None
        raise ToolCallBudgetExceeded(text, max_new_tokens, grammar.min_new_tokens)
    if reason != "tool_calls":
        raise RuntimeError(f"constrained decoding left the grammar: {text!r}")
    return text
