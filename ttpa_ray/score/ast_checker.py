"""BFCL-style AST checker: is a model's tool call equivalent to one of BFCL's ground truths?

Re-implements the semantics of BFCL's ``eval_checker/ast_eval/ast_checker.py`` (which
cannot be imported without its dependencies) for single-turn categories:

* The number of calls must equal the number of ground-truth calls (``wrong_count``).
  Calls are then matched to ground-truth entries independently of order, which is BFCL's
  parallel rule and reduces to its simple/multiple rules for one call. Unlike BFCL's
  greedy loop, the matching is a maximum bipartite matching, so a call that could match
  two ground-truth entries never blocks a valid assignment.
* Per call, in BFCL's order: the name must be the ground truth's (``wrong_func_name``);
  every ``required`` parameter of the function doc must be present
  (``missing_required``); every argument must be in both the doc and the ground truth
  (``unexpected_param``); its type must match the doc (``type_error``); its value must be
  one of the acceptable ones (``value_error``); finally every ground-truth parameter not
  marked optional by ``""`` must be present (BFCL's ``missing_optional``, reported here as
  ``missing_required``, since the ground truth requires it).
* Types and values follow BFCL: ``float`` accepts ``int`` (bools are never numbers);
  ``tuple`` accepts tuples and lists, ``array`` only lists; ``array``/``tuple`` items are
  type-checked one level deep; ``any`` is ``str``; a
  value of the ground truth's type is accepted when that differs from the doc's (BFCL's
  "variable" rule, e.g. a variable name passed for a ``dict``); strings compare
  case-insensitively ignoring spaces and ``,./-_*^``, also inside lists and dicts; dicts
  compare key by key and lists of dicts element-wise.

Deviations, all deliberate: docs may also be OpenAI tools (JSON Schema types; ``number`` is
``float``, ``object`` is ``dict``, a missing type is ``any``); a parameter whose type is
unknown, or whose function doc is missing, is not type-checked (values are still
compared); the optional marker ``""`` is only ever "may be omitted" (in BFCL it also
matches an empty list and waives the item-type check of arrays); ``int`` items are
accepted in ``float`` arrays; for Java/JavaScript, native (JSON) values are accepted as
well as the language literals BFCL requires (``"5L"``, ``"new int[]{1, 2}"``,
``"{a: 1}"``), and ``int`` is accepted for floating-point types.

Model outputs are read by :mod:`ttpa_ray.score.call_parser`; an output it cannot read,
e.g. one with positional arguments, is a ``parse_error``. A name matches a ground-truth
name verbatim or after ``.`` -> ``_`` (:func:`ttpa_ray.tools.bfcl.openai_tool_name`).

The checker never raises: unreadable outputs, answers or docs give ``parse_error``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ttpa_ray.score.call_parser import (
    AstParseError,
    Call,
    convert_language_value,
    is_number,
    parse_model_output,
    parse_python_calls,  # noqa: F401  (re-exported)
)
from ttpa_ray.tools.bfcl import openai_tool_name

__all__ = [
    "ERROR_TYPES",
    "AstCheckResult",
    "AstParseError",
    "ast_check",
    "ast_check_detail",
    "parse_model_output",
    "parse_python_calls",
    "standardize_string",
]

#: Every ``error_type`` :func:`ast_check` can return.
ERROR_TYPES = (
    "wrong_func_name",
    "wrong_count",
    "missing_required",
    "unexpected_param",
    "type_error",
    "value_error",
    "parse_error",
)

_LANGUAGES = ("python", "java", "javascript")


@dataclass(frozen=True)
class AstCheckResult:
    """Outcome of :func:`ast_check_detail`."""

    valid: bool
    error_type: str | None = None
    message: str = ""


# ----------------------------------------------------------------- docs and answers


@dataclass(frozen=True)
class _Doc:
    properties: dict[str, Any]
    required: list[str]
    known: bool  # False when no doc was found for the ground-truth name


def _unwrap_function(fn: Any) -> Mapping[str, Any]:
    if not isinstance(fn, Mapping):
        raise AstParseError("function doc must be a dict")
    if fn.get("type") == "function" and isinstance(fn.get("function"), Mapping):
        return fn["function"]
    return fn


def _read_functions(functions: Any) -> list[Mapping[str, Any]]:
    if functions is None:
        return []
    if isinstance(functions, Mapping):
        functions = [functions]
    if not isinstance(functions, list | tuple):
        raise AstParseError("functions must be a list of function docs")
    return [_unwrap_function(fn) for fn in functions]


def _find_doc(functions: list[Mapping[str, Any]], gt_name: str) -> _Doc:
    mapped = openai_tool_name(gt_name)
    by_name = {str(fn.get("name")): fn for fn in functions}
    fn = by_name.get(gt_name) or by_name.get(mapped)
    if fn is None:
        return _Doc(properties={}, required=[], known=False)
    params = fn.get("parameters")
    params = params if isinstance(params, Mapping) else {}
    properties = params.get("properties")
    required = params.get("required")
    return _Doc(
        properties=dict(properties) if isinstance(properties, Mapping) else {},
        required=[str(r) for r in required] if isinstance(required, list) else [],
        known=True,
    )


def _read_answers(possible_answer: Any) -> list[tuple[str, dict[str, list[Any]]]]:
    if not isinstance(possible_answer, list | tuple):
        raise AstParseError("possible_answer must be a list")
    answers: list[tuple[str, dict[str, list[Any]]]] = []
    for item in possible_answer:
        if not isinstance(item, Mapping) or len(item) != 1:
            raise AstParseError("each ground truth must be {func_name: {param: [values]}}")
        ((name, params),) = item.items()
        if not isinstance(name, str) or not isinstance(params, Mapping):
            raise AstParseError("each ground truth must be {func_name: {param: [values]}}")
        if not all(isinstance(v, list) for v in params.values()):
            raise AstParseError("acceptable values must be lists")
        answers.append((name, {str(k): v for k, v in params.items()}))
    return answers


# -------------------------------------------------------------------------- types

_ANY = "any"
_UNTYPED = "untyped"  # unknown type or missing doc: skip type checking

# Doc type (lower-cased; BFCL Python/Java/JS names and JSON Schema names) -> Python type.
_TYPE_TABLE: dict[str, type] = {
    "string": str,
    "str": str,
    "char": str,
    "character": str,
    "integer": int,
    "int": int,
    "long": int,
    "short": int,
    "byte": int,
    "bigint": int,
    "float": float,
    "double": float,
    "number": float,
    "boolean": bool,
    "bool": bool,
    "array": list,
    "arraylist": list,
    "list": list,
    "tuple": list,
    "set": list,
    "queue": list,
    "stack": list,
    "dict": dict,
    "object": dict,
    "hashmap": dict,
    "hashtable": dict,
    "map": dict,
    "null": type(None),
    _ANY: str,  # BFCL checks ``any`` as a string (plus the variable rule)
}


def _type_name(schema: Any, value: Any) -> str:
    """Lower-cased doc type of a parameter schema; ``any`` if absent."""
    if not isinstance(schema, Mapping) or "type" not in schema:
        return _ANY
    declared = schema["type"]
    if isinstance(declared, list):  # JSON Schema union: the member the value fits
        names = [str(t).lower() for t in declared]
        for name in names:
            if name in _TYPE_TABLE and _TYPE_TABLE[name] is _value_type(value, name):
                return name
        return names[0] if names else _ANY
    name = str(declared).lower()
    return name if name in _TYPE_TABLE else _UNTYPED


def _value_type(value: Any, type_name: str) -> type:
    if _TYPE_TABLE.get(type_name) is float and is_number(value):
        return float
    return type(value)


def _answer_type(acceptable: list[Any]) -> type | None:
    for answer in acceptable:
        if answer != "":
            return type(answer)
    return None


# ----------------------------------------------------------------- value checks

_STANDARDIZE_RE = re.compile(r"[ ,./\-_*^]")


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: drop spaces and ``,./-_*^``, lower-case, ' -> "."""
    return _STANDARDIZE_RE.sub("", text).lower().replace("'", '"')


def _std(value: Any) -> Any:
    return standardize_string(value) if isinstance(value, str) else value


class _Mismatch(Exception):
    """Internal: a parameter failed; carries the public error type."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _check_string(param: str, value: str, acceptable: list[Any]) -> None:
    candidates = {standardize_string(a) for a in acceptable if isinstance(a, str) and a != ""}
    if standardize_string(value) not in candidates:
        raise _Mismatch(
            "value_error", f"{param}={value!r} is not one of {acceptable!r} (case-insensitive)"
        )


def _check_list(param: str, value: list[Any], acceptable: list[Any]) -> None:
    std_value = [_std(v) for v in value]
    for answer in acceptable:
        if isinstance(answer, list | tuple) and [_std(a) for a in answer] == std_value:
            return
    raise _Mismatch("value_error", f"{param}={value!r} is not one of {acceptable!r}")


def _dict_matches(value: Mapping[Any, Any], answer: Mapping[str, Any]) -> str | None:
    """``None`` if ``value`` matches one ground-truth dict, else the reason."""
    for key, item in value.items():
        if key not in answer:
            return f"unexpected key {key!r}"
        options = answer[key] if isinstance(answer[key], list) else [answer[key]]
        if _std(item) not in [_std(o) for o in options]:
            return f"key {key!r}: {item!r} is not one of {options!r}"
    for key, options in answer.items():
        if key not in value and not (isinstance(options, list) and "" in options):
            return f"missing key {key!r}"
    return None


def _check_dict(param: str, value: Mapping[Any, Any], acceptable: list[Any]) -> None:
    reasons = []
    for answer in acceptable:
        if isinstance(answer, Mapping):
            reason = _dict_matches(value, answer)
            if reason is None:
                return
            reasons.append(reason)
    raise _Mismatch("value_error", f"{param}: {'; '.join(reasons) or 'no acceptable dict'}")


def _check_list_of_dicts(param: str, value: list[Any], acceptable: list[Any]) -> None:
    for answer in acceptable:
        if not isinstance(answer, list) or len(answer) != len(value):
            continue
        if all(
            isinstance(v, Mapping) and isinstance(a, Mapping) and _dict_matches(v, a) is None
            for v, a in zip(value, answer, strict=True)
        ):
            return
    raise _Mismatch("value_error", f"{param}={value!r} is not one of {acceptable!r}")


def _item_fits(item: Any, nested: type, item_type: type | None) -> bool:
    if type(item) is nested or type(item) is item_type:
        return True
    # ``float`` accepts ``int`` inside arrays too (BFCL only does it at the top level).
    return nested is float and type(item) is int


def _check_type(
    param: str, value: Any, acceptable: list[Any], expected: type, nested: type | None
) -> bool:
    """BFCL's type check; returns whether ``value`` is a "variable" (compared as-is)."""
    answer_type = _answer_type(acceptable)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        answers = [a for a in acceptable if a != ""]
        if nested is None or not answers:
            return is_variable
        for answer in answers:
            # Items must fit ``nested`` (or, BFCL's variable rule again, the items' type).
            # Unlike BFCL, the optional marker ``""`` does not waive this check.
            if not isinstance(answer, list):
                return is_variable
            item_type = _answer_type(answer)
            if all(_item_fits(v, nested, item_type) for v in cast(list[Any], value)):
                return is_variable
        raise _Mismatch(
            "type_error",
            f"{param}: items of {value!r} should be {nested.__name__}",
        )
    if answer_type is not None and type(value) is answer_type:
        return True
    raise _Mismatch(
        "type_error",
        f"{param}: expected {expected.__name__}, got {type(value).__name__} ({value!r})",
    )


def _check_param(
    param: str, value: Any, acceptable: list[Any], schema: Any, language: str, doc_known: bool
) -> None:
    type_name = _type_name(schema, value) if doc_known else _UNTYPED
    if type_name == _UNTYPED:
        # No type to check against: compare values the way their own type is compared.
        if isinstance(value, str):
            _check_string(param, value, acceptable)
        elif isinstance(value, list | tuple):
            _check_list(param, list(value), acceptable)
        elif isinstance(value, Mapping):
            _check_dict(param, value, acceptable)
        elif value not in acceptable:
            raise _Mismatch("value_error", f"{param}={value!r} is not one of {acceptable!r}")
        return

    expected = _TYPE_TABLE[type_name]
    nested: type | None = None
    if expected is list and isinstance(schema, Mapping):
        items = schema.get("items")
        if isinstance(items, Mapping):
            nested_name = _type_name(items, None)
            if nested_name != _UNTYPED:
                nested = _TYPE_TABLE[nested_name]

    if language != "python" and isinstance(value, str) and expected is not str:
        value = convert_language_value(value, expected)
    if language != "python" and expected is str and isinstance(value, str):
        value = convert_language_value(value, str)
    if isinstance(value, tuple) and type_name == "tuple":
        value = list(value)  # JSON ground truths have no tuples
    if expected is float and type(value) is int:
        value = float(value)

    is_variable = _check_type(param, value, acceptable, expected, nested)
    if not is_variable:
        if expected is dict:
            _check_dict(param, value, acceptable)
            return
        if expected is list and nested is dict:
            _check_list_of_dicts(param, value, acceptable)
            return
        if expected is str:
            _check_string(param, value, acceptable)
            return
        if expected is list:
            _check_list(param, value, acceptable)
            return
    if not _contains(acceptable, value):
        raise _Mismatch("value_error", f"{param}={value!r} is not one of {acceptable!r}")


def _contains(acceptable: Iterable[Any], value: Any) -> bool:
    # ``value in acceptable`` would say ``nan`` is not ``nan``; BFCL has no NaN anyway.
    for answer in acceptable:
        if answer == value:
            return True
        if (
            isinstance(answer, float)
            and isinstance(value, float)
            and math.isnan(answer)
            and math.isnan(value)
        ):
            return True
    return False


# ------------------------------------------------------------------ call matching


@dataclass(frozen=True)
class _CallError:
    error_type: str
    message: str
    # How far the call got through the checks; the most advanced failure is the one
    # reported when no assignment of calls to ground truths works.
    progress: tuple[int, int]


def _name_matches(model_name: str, gt_name: str) -> bool:
    return model_name == gt_name or model_name == openai_tool_name(gt_name)


def _check_call(
    call: Call, gt_name: str, gt_params: dict[str, list[Any]], doc: _Doc, language: str
) -> _CallError | None:
    name, args = call
    if not _name_matches(name, gt_name):
        return _CallError("wrong_func_name", f"expected {gt_name!r}, got {name!r}", (0, 0))
    for param in doc.required:
        if param not in args:
            return _CallError(
                "missing_required", f"{gt_name}: missing required parameter {param!r}", (1, 0)
            )
    for index, (param, value) in enumerate(args.items()):
        in_doc = param in doc.properties or not doc.known
        if not in_doc or param not in gt_params:
            return _CallError(
                "unexpected_param", f"{gt_name}: unexpected parameter {param!r}", (2, index)
            )
        try:
            _check_param(
                param, value, gt_params[param], doc.properties.get(param), language, doc.known
            )
        except _Mismatch as mismatch:
            return _CallError(mismatch.error_type, f"{gt_name}: {mismatch.message}", (2, index))
    for param, acceptable in gt_params.items():
        if param not in args and "" not in acceptable:
            return _CallError(
                "missing_required",
                f"{gt_name}: parameter {param!r} is required by the ground truth",
                (3, 0),
            )
    return None


def _max_matching(valid: list[list[bool]]) -> list[int | None]:
    """Kuhn's augmenting paths: for each ground truth, the matched call index or None."""
    n_gt = len(valid)
    n_calls = len(valid[0]) if valid else 0
    owner: list[int | None] = [None] * n_calls  # call -> ground truth

    def augment(gt: int, seen: list[bool]) -> bool:
        for call in range(n_calls):
            if valid[gt][call] and not seen[call]:
                seen[call] = True
                current = owner[call]
                if current is None or augment(current, seen):
                    owner[call] = gt
                    return True
        return False

    for gt in range(n_gt):
        augment(gt, [False] * n_calls)
    match: list[int | None] = [None] * n_gt
    for call, owned_by in enumerate(owner):
        if owned_by is not None:
            match[owned_by] = call
    return match


def _check(
    model_output: Any, possible_answer: Any, functions: Any, language: str
) -> AstCheckResult:
    if language not in _LANGUAGES:
        return AstCheckResult(False, "parse_error", f"unsupported language {language!r}")
    try:
        answers = _read_answers(possible_answer)
        docs = _read_functions(functions)
    except AstParseError as exc:
        return AstCheckResult(False, "parse_error", f"invalid ground truth or docs: {exc}")
    try:
        calls = parse_model_output(model_output)
    except AstParseError as exc:
        return AstCheckResult(False, "parse_error", str(exc))

    if len(calls) != len(answers):
        return AstCheckResult(
            False, "wrong_count", f"expected {len(answers)} call(s), got {len(calls)}"
        )
    if not answers:
        return AstCheckResult(True)

    gt_docs = [_find_doc(docs, name) for name, _ in answers]
    errors: list[list[_CallError | None]] = [
        [_check_call(call, name, params, doc, language) for call in calls]
        for (name, params), doc in zip(answers, gt_docs, strict=True)
    ]
    match = _max_matching([[error is None for error in row] for row in errors])
    if all(m is not None for m in match):
        return AstCheckResult(True)

    matched_calls = {m for m in match if m is not None}
    unmatched: list[_CallError] = []
    for gt, row in enumerate(errors):
        if match[gt] is not None:
            continue
        for call, error in enumerate(row):
            if call not in matched_calls and error is not None:
                unmatched.append(error)
    worst = max(unmatched, key=lambda error: error.progress)
    return AstCheckResult(False, worst.error_type, worst.message)


def ast_check_detail(
    model_output: Any, possible_answer: Any, functions: Any, language: str = "python"
) -> AstCheckResult:
    """Check ``model_output`` against BFCL's ``possible_answer`` with a message.

    ``functions`` are BFCL function docs or OpenAI tools; ``language`` is ``python``,
    ``java`` or ``javascript``. An empty ``possible_answer`` (irrelevance) is satisfied
    only by no call at all.
    """
    try:
        return _check(model_output, possible_answer, functions, language)
    except Exception as exc:  # the contract is "never raises", whatever the input
        return AstCheckResult(False, "parse_error", f"unreadable input: {exc!r}")


def ast_check(
    model_output: Any, possible_answer: Any, functions: Any, language: str = "python"
) -> tuple[bool, str | None]:
    """``(True, None)`` if ``model_output`` matches the ground truth, else
    ``(False, error_type)`` with ``error_type`` in :data:`ERROR_TYPES`."""
    result = ast_check_detail(model_output, possible_answer, functions, language)
    return result.valid, result.error_type
