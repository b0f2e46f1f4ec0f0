"""The tool-call text format: Hermes/Qwen-style `<tool_call>` blocks, rendered and parsed.

This module is the single place the format lives. Serving, sampling, scoring and the chat
template (`ttpa_ray/train/templates/hermes_tools.jinja`) all agree with it byte for byte.

One call renders as::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
    </tool_call>

JSON is `json.dumps(..., ensure_ascii=False)` with the default separators `(", ", ": ")`
and keys in their given order: exactly what the chat template's `tojson` filter emits, so
a call rendered here and one rendered by the template are the same string. Parallel calls
are consecutive blocks joined by one newline. An assistant turn with text and calls is
`content + "\\n" + blocks` (`render_assistant_text`).

Pure Python (no torch, no Ray): imported by inference-side workers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# Reasons reported in `ParseResult.errors` start with one of these words, so callers can
# count them by kind (the rest of the string is a human-readable detail).
ERR_UNTERMINATED = "unterminated"
ERR_EMPTY = "empty"
ERR_BAD_JSON = "bad_json"
ERR_NOT_OBJECT = "not_object"
ERR_MISSING_NAME = "missing_name"
ERR_BAD_ARGUMENTS = "bad_arguments"
ERR_INTERNAL = "internal"


def _dumps(value: Any) -> str:
    """The one JSON encoding of the format (matches the chat template's `tojson`)."""
    return json.dumps(value, ensure_ascii=False)


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; accepting them would let non-JSON "arguments" through.
    raise ValueError(f"non-JSON constant {name}")


def _finite_float(text: str) -> float:
    # "1e999" is valid JSON syntax but overflows to inf, which would dump as "Infinity".
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} overflows a float")
    return value


# Strict JSON for every parser of model output (also `engines.json_output`).
STRICT_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _loads_strict(text: str) -> Any:
    """`json.loads` without NaN/Infinity. Raises ValueError (or RecursionError)."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _arguments_text(arguments: Any) -> str:
    """The JSON text of `arguments` inside a rendered call.

    A mapping is dumped; None is `{}`; a string that parses to a JSON object is re-dumped
    canonically; any other string is inserted verbatim (as the chat template does, since
    Jinja cannot parse JSON), so the rendered block is then malformed on purpose.
    """
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        try:
            parsed = _loads_strict(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return arguments
        return _dumps(parsed) if isinstance(parsed, dict) else arguments
    if isinstance(arguments, Mapping):
        return _dumps(dict(arguments))
    return _dumps(arguments)


def render_tool_call(name: str, arguments: Mapping[str, Any] | str | None) -> str:
    """One `<tool_call>` block: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

    `arguments` may be a dict, a JSON string (parsed, then re-dumped canonically) or None
    (`{}`); a string that is not a JSON object is inserted verbatim.
    """
    return f'{TOOL_CALL_OPEN}\n{{"name": {_dumps(name)}, "arguments": {_arguments_text(arguments)}}}\n{TOOL_CALL_CLOSE}'


def _name_and_arguments(call: Mapping[str, Any]) -> tuple[str, Any]:
    """(name, arguments) from the OpenAI shape `{"function": {...}}` or the flat shape."""
    fn = call.get("function")
    if not isinstance(fn, Mapping):
        fn = call
    return fn["name"], fn.get("arguments")


def render_tool_calls(calls: Iterable[Mapping[str, Any]]) -> str:
    """Parallel calls as consecutive blocks joined by "\\n" ("" for no calls).

    Each call is OpenAI-shaped (`{"id", "type", "function": {"name", "arguments"}}`) or flat
    (`{"name", "arguments"}`). Raises KeyError for a call without a name.
    """
    return "\n".join(render_tool_call(*_name_and_arguments(c)) for c in calls)


def render_assistant_text(
    content: str | None, tool_calls: Iterable[Mapping[str, Any]] | None = None
) -> str:
    """An assistant turn's body as the chat template renders it (without header/`<|im_end|>`).

    `content`, then "\\n" if both content and calls are present, then the call blocks.
    """
    text = content or ""
    blocks = render_tool_calls(tool_calls or [])
    if text and blocks:
        return f"{text}\n{blocks}"
    return text + blocks


def canonical_arguments(arguments: Mapping[str, Any] | str | None) -> str:
    """`arguments` as the canonical JSON string (what `render_tool_call` embeds)."""
    return _arguments_text(arguments)


def canonicalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `messages` whose tool-call `arguments` are canonical JSON strings.

    The chat template inserts string arguments verbatim (Jinja cannot parse JSON), so
    `{"a":1}` and `{"a": 1}` would render differently; run messages through this before
    `apply_chat_template` to make every call byte-identical to `render_tool_call`.
    Arguments that are not a JSON object are left as they are.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        m = copy.deepcopy(dict(message))
        for call in m.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            inner = call.get("function")
            fn: dict[str, Any] = inner if isinstance(inner, dict) else call
            if "arguments" in fn:
                # Garbage strings come back verbatim from `_arguments_text`.
                fn["arguments"] = _arguments_text(fn["arguments"])
        out.append(m)
    return out


@dataclass
class ParseResult:
    """What `parse_tool_calls` found in one text.

    content: the text outside `<tool_call>` blocks: each outside segment stripped, empty
        ones dropped, joined by "\\n".
    tool_calls: OpenAI-shaped calls in text order: `{"id": "call_<hash>", "type":
        "function", "function": {"name": str, "arguments": <canonical JSON object string>}}`.
    errors: one reason per malformed block ("<kind>: <detail>", kinds `ERR_*`); a
        malformed block yields no call.
    """

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _call_id(index: int, name: str, arguments: str) -> str:
    # Stable across runs and processes (unlike hash()); the index keeps identical
    # parallel calls apart.
    digest = hashlib.sha256(f"{index}\x00{name}\x00{arguments}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def _parse_block(body: str) -> tuple[str, str] | str:
    """A block's body → (name, canonical arguments JSON), or an error reason."""
    text = body.strip()
    if not text:
        return f"{ERR_EMPTY}: empty <tool_call> block"
    try:
        obj = _loads_strict(text)
    except RecursionError:
        return f"{ERR_BAD_JSON}: nesting too deep"
    except ValueError as e:
        return f"{ERR_BAD_JSON}: {e}"
    if not isinstance(obj, dict):
        return f"{ERR_NOT_OBJECT}: block is a JSON {type(obj).__name__}, not an object"
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return f"{ERR_MISSING_NAME}: no non-empty string 'name'"
    # A tool without parameters is often called without "arguments"; that is not an error.
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = _loads_strict(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return f"{ERR_BAD_ARGUMENTS}: 'arguments' is a string that is not JSON"
    if not isinstance(args, dict):
        return f"{ERR_BAD_ARGUMENTS}: 'arguments' is a {type(args).__name__}, not an object"
    return name, _dumps(args)


def _parse(text: str) -> ParseResult:
    outside: list[str] = []
    calls: list[dict[str, Any]] = []
    errors: list[str] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:start])
        body_start = start + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body_start)
        reopen = text.find(TOOL_CALL_OPEN, body_start)
        if close >= 0 and (reopen < 0 or close < reopen):
            body, pos, terminated = text[body_start:close], close + len(TOOL_CALL_CLOSE), True
        else:
            # No closing tag before the next block (or the end, e.g. cut by max_tokens):
            # the body runs up to there; accept it only if it still parses.
            end = reopen if reopen >= 0 else len(text)
            body, pos, terminated = text[body_start:end], end, False
        parsed = _parse_block(body)
        if isinstance(parsed, str):
            if not terminated:
                parsed = f"{ERR_UNTERMINATED}: <tool_call> without </tool_call> ({parsed})"
            errors.append(parsed)
            continue
        name, arguments = parsed
        calls.append(
            {
                "id": _call_id(len(calls), name, arguments),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    content = "\n".join(s for s in (seg.strip() for seg in outside) if s)
    return ParseResult(content=content, tool_calls=calls, errors=errors)


def parse_tool_calls(text: str) -> ParseResult:
    """Split model output into content and `<tool_call>` calls. Never raises.

    Tolerates whitespace around the JSON, text before/between/after blocks, `arguments`
    given as a JSON string, a missing `arguments` (→ `{}`), and a missing `</tool_call>`
    (the body then runs to the next `<tool_call>` or the end of text and is kept if it
    parses; otherwise the reason starts with "unterminated"). Strict otherwise: one JSON
    object per block with a non-empty string `name` and an object `arguments`; NaN and
    Infinity are rejected. A stray `</tool_call>` is left in `content`. Non-str input
    gives an empty result with an `internal` reason.
    """
    try:
        if not isinstance(text, str):
            return ParseResult(content="", errors=[f"{ERR_INTERNAL}: input is not a str"])
        return _parse(text)
    except Exception as e:  # the contract is "never raises": report instead
        return ParseResult(content="", errors=[f"{ERR_INTERNAL}: {type(e).__name__}: {e}"])


def to_flat_calls(tool_calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped (or flat) calls → `[{"name": str, "arguments": dict}]`, in order.

    String arguments are parsed ("" → `{}`, None → `{}`). Raises ValueError when
    arguments are not a JSON object, KeyError when a call has no name.
    """
    out: list[dict[str, Any]] = []
    for call in tool_calls:
        name, args = _name_and_arguments(call)
        if args is None:
            args = {}
        elif isinstance(args, str):
            args = _loads_strict(args) if args.strip() else {}
        if not isinstance(args, Mapping):
            raise ValueError(f"arguments of {name!r} must be a JSON object")
        out.append({"name": name, "arguments": dict(args)})
    return out


def parse_prediction(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Model text → (flat calls, reasons of malformed blocks). Never raises.

    The one text → calls function: evaluation and TPS scoring both read a model's answer
    through it, so a candidate scores the same in both. Only `<tool_call>` blocks count:
    bare JSON (`{"name": ...}` without the tags) is text, i.e. no call.
    """
    parsed = parse_tool_calls(text)
    try:
        calls = to_flat_calls(parsed.tool_calls)
    except (KeyError, ValueError) as exc:  # cannot happen for parser output; stay total
        return [], [*parsed.errors, f"bad_call: {exc}"]
    return calls, parsed.errors
