"""Turn a model's output into tool calls, and Java/JavaScript literals into Python values.

Model outputs are a Python call string (``f(a=1)``, ``[f(a=1), m.g(b=[1, -2])]``), a JSON
string, or a list of ``{"name", "arguments"}`` dicts (``arguments`` a dict or a JSON
string; OpenAI ``{"function": {...}}`` wrappers and BFCL's ``{name: arguments}`` are
accepted too). Python arguments are read with :func:`ast.literal_eval`; bare names become
strings (BFCL's variables), arithmetic on numbers is folded without ``eval``, and any other
expression becomes its source text. Positional arguments are rejected: mapping them by
position would depend on the order of the doc's ``properties``, which is not a signature.

Java/JavaScript source literals (``"5L"``, ``"new int[]{1, 2}"``, ``"{a: 1}"``) are read
through the same parser by :func:`convert_language_value`, for the checker in
:mod:`ttpa_ray.score.ast_checker`.

Unreadable input raises :class:`AstParseError`.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "AstParseError",
    "Call",
    "convert_language_value",
    "is_number",
    "parse_model_output",
    "parse_python_calls",
]

#: A parsed call: (function name, arguments).
Call = tuple[str, dict[str, Any]]

_MAX_OUTPUT_CHARS = 1_000_000
_MAX_POWER_EXPONENT = 10_000
_MAX_INT_BITS = 100_000


class AstParseError(ValueError):
    """A model output, ground truth or function doc could not be read."""


# --------------------------------------------------------------------------- parsing


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def is_number(value: Any) -> bool:
    """``int`` or ``float``, but not ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resolve(node: ast.expr, source: str) -> Any:
    """Value of an argument expression, without ever evaluating code."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.List):
        return [_resolve(elt, source) for elt in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_resolve(elt, source) for elt in node.elts)
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:  # ``**spread`` has no literal value
                raise AstParseError("dict unpacking is not a literal")
            resolved_key = _resolve(key, source)
            if isinstance(resolved_key, list | dict | set):
                raise AstParseError("unhashable dict key")
            out[resolved_key] = _resolve(value, source)
        return out
    if isinstance(node, ast.Name):
        return node.id  # BFCL treats bare names as variables, i.e. strings
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _resolve(node.operand, source)
        if is_number(operand):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _resolve(node.left, source), _resolve(node.right, source)
        if is_number(left) and is_number(right):
            # Bound sizes so ``10**10**10`` or ``(10**999)**999`` cannot hang the checker.
            if isinstance(node.op, ast.Pow) and (
                abs(right) > _MAX_POWER_EXPONENT
                or (isinstance(left, int) and abs(left).bit_length() * abs(right) > _MAX_INT_BITS)
            ):
                raise AstParseError("power too large")
            try:
                result = _BINOPS[type(node.op)](left, right)
            except (ArithmeticError, ValueError) as exc:
                raise AstParseError(f"invalid arithmetic: {exc}") from exc
            if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
                raise AstParseError("integer too large")
            return result
    # Calls, attributes, subscripts, f-strings...: keep the source text, as BFCL does for
    # most of them.
    segment = ast.get_source_segment(source, node)
    return segment if segment is not None else ast.unparse(node)


def _call_name(func: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise AstParseError("call target is not a (dotted) name")
    parts.append(func.id)
    return ".".join(reversed(parts))


def _resolve_call(node: ast.Call, source: str) -> Call:
    if node.args:
        raise AstParseError(
            f"positional arguments are not supported in {ast.unparse(node.func)}(...)"
        )
    args: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise AstParseError("**kwargs in a call is not supported")
        if keyword.arg in args:
            raise AstParseError(f"repeated keyword argument {keyword.arg!r}")
        args[keyword.arg] = _resolve(keyword.value, source)
    return _call_name(node.func), args


_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_python_calls(text: str) -> list[Call]:
    """Parse ``f(a=1)`` or ``[f(a=1), g.h(b="x")]`` into ``[(name, args), ...]``.

    Raises :class:`AstParseError` for anything that is not a call or list of calls.
    """
    if not isinstance(text, str):
        raise AstParseError(f"expected a string, got {type(text).__name__}")
    if len(text) > _MAX_OUTPUT_CHARS:
        raise AstParseError("model output too long")
    stripped = text.strip()
    fenced = _FENCE_RE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    # Same clean-up as BFCL: stray backticks and wrapping quotes.
    source = stripped.strip("`\n ").strip("'").strip()
    if not source:
        raise AstParseError("empty model output")
    try:
        body = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise AstParseError(f"not a Python expression: {exc}") from exc
    if isinstance(body, ast.Call):
        nodes: list[ast.expr] = [body]
    elif isinstance(body, ast.List | ast.Tuple):
        nodes = list(body.elts)
    else:
        raise AstParseError("expected a call or a list of calls")
    calls: list[Call] = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            raise AstParseError("list element is not a call")
        calls.append(_resolve_call(node, source))
    return calls


def _call_from_mapping(item: Mapping[str, Any]) -> Call:
    if isinstance(item.get("function"), Mapping):  # OpenAI tool_call wrapper
        item = item["function"]
    if "name" in item and isinstance(item["name"], str):
        arguments = item.get("arguments", item.get("parameters", {}))
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (json.JSONDecodeError, RecursionError) as exc:
                raise AstParseError(f"arguments are not valid JSON: {exc}") from exc
        if not isinstance(arguments, Mapping):
            raise AstParseError("arguments must be an object")
        if not all(isinstance(key, str) for key in arguments):
            raise AstParseError("argument names must be strings")
        return item["name"], dict(arguments)
    if len(item) == 1:  # BFCL's decoded form {name: {arg: value}}
        ((name, arguments),) = item.items()
        if isinstance(name, str) and isinstance(arguments, Mapping):
            return name, dict(arguments)
    raise AstParseError("a call must be {'name': str, 'arguments': dict | str}")


def parse_model_output(model_output: Any) -> list[Call]:
    """Normalise any accepted model-output form into ``[(name, args), ...]``."""
    if isinstance(model_output, str):
        try:
            return parse_python_calls(model_output)
        except AstParseError as python_error:
            try:
                decoded = json.loads(model_output)
            except (json.JSONDecodeError, RecursionError):
                raise python_error from None
            if not isinstance(decoded, list | dict):
                raise python_error from None
            return parse_model_output(decoded)
    if isinstance(model_output, Mapping):
        return [_call_from_mapping(model_output)]
    if isinstance(model_output, list | tuple):
        calls: list[Call] = []
        for item in model_output:
            if not isinstance(item, Mapping):
                raise AstParseError(f"call must be a dict, got {type(item).__name__}")
            calls.append(_call_from_mapping(item))
        return calls
    raise AstParseError(f"unsupported model output type {type(model_output).__name__}")


# ---------------------------------------------------------- Java / JavaScript values

_JAVA_NUMBER_SUFFIX = re.compile(
    r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|(?<![\w.])(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)[lLfFdDn]\b"""
)
_JAVA_NEW_ARRAY = re.compile(r"^new\s+[\w.$<>, ]+?\s*(?:\[\s*\]\s*)+\{(.*)\}$", re.DOTALL)
_JAVA_AS_LIST = re.compile(
    r"^(?:new\s+\w+(?:<[^>]*>)?\s*\(\s*)?(?:Arrays\.asList|List\.of|Set\.of)\s*\((.*?)\)\s*\)?$",
    re.DOTALL,
)
_JAVA_ADD_BLOCK = re.compile(r"^new\s+\w+(?:<[^>]*>)?\s*\(\s*\)\s*\{\s*\{(.*)\}\s*\}$", re.DOTALL)
_JAVA_EMPTY_NEW = re.compile(r"^new\s+\w+(?:<[^>]*>)?\s*\(\s*\)\s*(?:\{\s*\{?\s*\}?\s*\})?$")
_JAVA_MAP_OF = re.compile(r"^Map\.of\s*\((.*)\)$", re.DOTALL)
_JS_NEW_ARRAY = re.compile(r"^new\s+Array\s*\((.*)\)$", re.DOTALL)
_JS_CONSTANTS = {"true": True, "false": False, "null": None, "undefined": None}


def _literal(text: str) -> Any:
    """A Java/JS literal or collection read through the Python parser."""
    cleaned = _JAVA_NUMBER_SUFFIX.sub(lambda m: m.group(1) or m.group(2), text)
    body = ast.parse(cleaned, mode="eval").body
    return _fix_constants(_resolve(body, cleaned))


def _fix_constants(value: Any) -> Any:
    if isinstance(value, str) and value in _JS_CONSTANTS:
        return _JS_CONSTANTS[value]
    if isinstance(value, list | tuple):
        return [_fix_constants(v) for v in value]
    if isinstance(value, dict):
        return {k: _fix_constants(v) for k, v in value.items()}
    return value


def convert_language_value(text: str, python_type: type) -> Any:
    """Convert a Java/JS source literal to the doc's Python type; unchanged if it fails."""
    stripped = text.strip()
    try:
        if python_type is list:
            for pattern in (_JAVA_NEW_ARRAY, _JAVA_AS_LIST, _JS_NEW_ARRAY):
                match = pattern.match(stripped)
                if match:
                    inner = match.group(1)
                    if pattern is _JAVA_NEW_ARRAY and not re.search("[\"']", inner):
                        # Nested Java array initialisers ``{{1, 2}, {3}}`` are lists.
                        inner = inner.replace("{", "[").replace("}", "]")
                    return list(_literal(f"[{inner}]"))
            block = _JAVA_ADD_BLOCK.match(stripped)
            if block:
                items = re.findall(r"add\s*\((.*?)\)\s*;", block.group(1), re.DOTALL)
                return [_literal(item) for item in items]
            if _JAVA_EMPTY_NEW.match(stripped):
                return []
            value = _literal(stripped)
            return list(value) if isinstance(value, list | tuple) else text
        if python_type is dict:
            block = _JAVA_ADD_BLOCK.match(stripped)
            if block:
                puts = re.findall(r"put\s*\((.*?)\)\s*;", block.group(1), re.DOTALL)
                pairs = [_literal(f"({put})") for put in puts]
                return {k: v for k, v in pairs}
            map_of = _JAVA_MAP_OF.match(stripped)
            if map_of:
                flat = _literal(f"[{map_of.group(1)}]")
                return dict(zip(flat[::2], flat[1::2], strict=True))
            if _JAVA_EMPTY_NEW.match(stripped):
                return {}
            value = _literal(stripped)
            return value if isinstance(value, dict) else text
        value = _literal(stripped)
    except (AstParseError, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return text
    if python_type is float and is_number(value):
        return float(value)
    if python_type is str and len(stripped) >= 2 and stripped[0] == stripped[-1] in "\"'":
        return value if isinstance(value, str) else text
    return value if type(value) is python_type else text
