"""Content checks of a request body: JSON nesting and lone surrogates, chat messages,
tools and their schemas. Pure Python; each raises a 400 `OpenAIError` naming the field,
and each walks its input iteratively, so no input can exhaust the stack."""

from __future__ import annotations

import json
from typing import Any

from ttpa_ray.config import ServeLimits
from ttpa_ray.schema.tools import ToolValidationError, validate_tool
from ttpa_ray.serve.errors import bad_request

ROLES = ("system", "user", "assistant", "tool", "developer")


def _path(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def check_json(value: Any, max_depth: int) -> None:
    """No object/list nested deeper than `max_depth`, no string (or key) holding a lone
    surrogate (JSON allows `"\\ud800"`; the tokenizer cannot encode it). Iterative, so
    no input can exhaust the stack."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 0, ())]
    while stack:
        v, depth, path = stack.pop()
        if isinstance(v, str):
            _check_text(v, path)
        elif isinstance(v, (dict, list)):
            if depth >= max_depth:
                raise bad_request(
                    f"{_path(path) or 'the request body'} is nested deeper than {max_depth} levels",
                    _path(path[:1]) or None,
                )
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                if isinstance(k, str):
                    _check_text(k, path)
                stack.append((child, depth + 1, (*path, k)))


def _check_text(s: str, path: tuple[Any, ...]) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        where = _path(path) or "the request body"
        raise bad_request(
            f"{where} holds a lone surrogate (\\u{ord(s[_surrogate_at(s)]):04x}), which is not "
            "valid Unicode",
            _path(path) or None,
        ) from None


def _surrogate_at(s: str) -> int:
    return next(i for i, c in enumerate(s) if 0xD800 <= ord(c) <= 0xDFFF)


def check_messages(messages: list[dict[str, Any]]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(
                f"messages[{i}].role: unknown role {role!r}; expected one of {', '.join(ROLES)}",
                f"messages[{i}].role",
            )
        _check_content(m.get("content"), f"messages[{i}].content")
        calls = m.get("tool_calls")
        if calls is None:
            continue
        if not isinstance(calls, list):
            raise bad_request(
                f"messages[{i}].tool_calls must be a list of calls, got {type(calls).__name__}",
                f"messages[{i}].tool_calls",
            )
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise bad_request(
                    f"messages[{i}].tool_calls[{j}] needs function.name",
                    f"messages[{i}].tool_calls",
                )
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    parsed = json.loads(args or "{}")
                except (ValueError, RecursionError):
                    raise bad_request(
                        f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON",
                        f"messages[{i}].tool_calls",
                    ) from None
                if not isinstance(parsed, dict):
                    raise bad_request(
                        f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object",
                        f"messages[{i}].tool_calls",
                    )
            elif not isinstance(args, dict):
                raise bad_request(
                    f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON string "
                    "or an object",
                    f"messages[{i}].tool_calls",
                )


def _check_content(content: Any, param: str) -> None:
    """A string, None, or a list of text parts (the only kind a text model can read)."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or a list of parts", param)
    for k, part in enumerate(content):
        if not (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            raise bad_request(
                f"{param}[{k}]: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                param,
            )


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with list-of-parts content joined into one string (chat templates expect
    strings); checked by `check_messages` first."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            m = {**m, "content": "".join(p["text"] for p in content)}
        out.append(m)
    return out


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t.get("function", t).get("name") for t in tools or []]


def check_tools(
    tools: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None, limits: ServeLimits
) -> None:
    """Every tool a valid OpenAI function tool, its parameters at most
    `limits.max_schema_depth` deep, `$ref`s local (`#/...`) only; `tool_choice` valid and
    naming an offered one."""
    for i, tool in enumerate(tools or []):
        params = tool.get("function", tool).get("parameters") if isinstance(tool, dict) else None
        if isinstance(params, (dict, list)):
            check_schema_shape(params, limits.max_schema_depth, f"tools[{i}]")
        try:
            validate_tool(tool)
        except ToolValidationError as e:
            raise bad_request(f"tools[{i}]: {e}", f"tools[{i}]") from None
        except RecursionError:
            raise bad_request(
                f"tools[{i}]: the schema is nested too deeply", f"tools[{i}]"
            ) from None
    if choice is None or choice in ("auto", "none"):
        return
    if choice == "required":
        if not tools:
            raise bad_request("tool_choice 'required' needs tools", "tool_choice")
        return
    if isinstance(choice, str):
        raise bad_request(
            f"tool_choice must be auto, none, required or a function, got {choice!r}", "tool_choice"
        )
    fn = choice.get("function") if choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise bad_request(
            'tool_choice must be {"type": "function", "function": {"name": ...}}', "tool_choice"
        )
    if name not in tool_names(tools):
        raise bad_request(
            f"tool_choice names {name!r}, which is not among the offered tools", "tool_choice"
        )


def check_schema_shape(schema: Any, max_depth: int, param: str) -> None:
    """A tool's parameters: nested at most `max_depth` deep, and every `$ref` local
    (`#...`): a remote reference is never fetched, so it cannot be honoured."""
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        v, depth = stack.pop()
        if not isinstance(v, (dict, list)):
            continue
        if depth >= max_depth:
            raise bad_request(
                f"{param}: the schema is nested deeper than {max_depth} levels", param
            )
        if isinstance(v, dict):
            ref = v.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                raise bad_request(
                    f"{param}: $ref {ref!r} is not a local reference ('#/...'); remote "
                    "schemas are not fetched",
                    param,
                )
            stack.extend((c, depth + 1) for c in v.values())
        else:
            stack.extend((c, depth + 1) for c in v)
