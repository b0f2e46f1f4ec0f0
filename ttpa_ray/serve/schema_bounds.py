"""JSON Schema bounding for constrained tool-call decoding (used by `constrained`).

Pure functions over JSON Schemas (no torch, no xgrammar at import): they turn a tool's
`parameters` schema into a finite language that xgrammar compiles, and size its longest
JSON text so `constrained` can give a token budget that always suffices. Split out of
`constrained.py`, which re-exports the public names here.

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

Limits. Not enforced: `oneOf` exclusivity, `multipleOf`, `not`, `if`/`then`,
`patternProperties`, `dependentRequired`, a `maxLength` beside a `pattern`/`format`,
`uniqueItems` with `minItems >= 2` over non-enumerable items; a user `pattern` may let
"<" into a value. Refused with ValueError: a recursive or non-local `$ref`, a pattern
xgrammar cannot compile (e.g. one item repeated more than ~128 times).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

try:  # Python ≥ 3.11 moved the regex parser; only its width computation is used.
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# xgrammar's bounded numbers carry at most 6 fraction digits.
_NUMBER_FRACTION_DIGITS = 6
# A string character in these grammars is one unescaped code point (`maxLength` classes
# and patterns exclude the backslash): at most 4 UTF-8 bytes, each at least one token.
_MAX_CHAR_BYTES = 4
_UNBOUNDED_WIDTH = 10**7


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

# --- Bounding --------------------------------------------------------------------------------


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
