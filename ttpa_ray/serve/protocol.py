"""The OpenAI chat-completions protocol: request validation, errors, response shapes.

Pure Python (pydantic, no Ray, no torch). Requests are validated here so that client
input can only ever produce a 4xx in OpenAI's error shape, never a 500:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttpa_ray.config import ServeLimits
from ttpa_ray.schema.tool_call_text import parse_tool_calls
from ttpa_ray.schema.tools import ToolValidationError, validate_tool

ROLES = ("system", "user", "assistant", "tool", "developer")
INT64 = (-(2**63), 2**63 - 1)  # OpenAI's seed range; torch.manual_seed accepts it
DEFAULT_LIMITS = ServeLimits()


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


class _Open(BaseModel):
    # OpenAI clients send fields we do not use (user, logprobs, stream_options, ...): accept.
    model_config = ConfigDict(extra="allow")


class ChatRequest(_Open):
    """`POST /v1/chat/completions` body (the fields we act on; others are accepted)."""

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def _describe(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return f"{param}: {first['msg']}" if param else first["msg"], param


def parse_body(raw: bytes, limits: ServeLimits = DEFAULT_LIMITS) -> ChatRequest:
    """The raw request body → a validated request, or a 400 `OpenAIError` naming the
    field: invalid UTF-8, invalid JSON, nesting over `limits.max_json_depth`, lone
    surrogates, then `parse_request`. (The body size is checked before it is read.)"""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise bad_request(
            f"the request body is nested too deeply (limit {limits.max_json_depth})"
        ) from None
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    return parse_request(body, limits)


def parse_request(body: Any, limits: ServeLimits = DEFAULT_LIMITS) -> ChatRequest:
    """A JSON body → a validated request; raises a 400 `OpenAIError` naming the field.

    Every check is on the request alone (no tokenizer, no model): what is left to fail
    later is the prompt's length, which needs the tokenizer."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_json(body, limits.max_json_depth)
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        message, param = _describe(e)
        raise bad_request(message, param) from None
    check_limits(req, limits)
    check_messages(req.messages)
    check_tools(req, limits)
    return req


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


def check_limits(req: ChatRequest, limits: ServeLimits) -> None:
    """Counts and sizes the server accepts (`serve.limits`), before any work."""
    if len(req.messages) > limits.max_messages:
        raise bad_request(
            f"{len(req.messages)} messages; at most {limits.max_messages} are accepted",
            "messages",
        )
    if req.tools is not None and len(req.tools) > limits.max_tools:
        raise bad_request(
            f"{len(req.tools)} tools; at most {limits.max_tools} are accepted", "tools"
        )
    if req.n > limits.max_n:
        raise bad_request(f"n is {req.n}; at most {limits.max_n} choices are accepted", "n")
    new = req.new_tokens
    if new is not None and new > limits.max_tokens:
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise bad_request(f"{field} is {new}; at most {limits.max_tokens} are accepted", field)
    stops = req.stops or []
    if len(stops) > limits.max_stop:
        raise bad_request(f"at most {limits.max_stop} stop sequences are accepted", "stop")
    for s in stops:
        if not s:
            raise bad_request("stop sequences must not be empty", "stop")
        if len(s) > limits.max_stop_chars:
            raise bad_request(
                f"a stop sequence has {len(s)} characters; at most {limits.max_stop_chars}",
                "stop",
            )


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


def check_tools(req: ChatRequest, limits: ServeLimits = DEFAULT_LIMITS) -> None:
    """Every tool a valid OpenAI function tool, its parameters at most
    `limits.max_schema_depth` deep, `$ref`s local (`#/...`) only; `tool_choice` valid and
    naming an offered one."""
    for i, tool in enumerate(req.tools or []):
        params = tool.get("function", tool).get("parameters") if isinstance(tool, dict) else None
        if isinstance(params, (dict, list)):
            _check_schema_shape(params, limits.max_schema_depth, f"tools[{i}]")
        try:
            validate_tool(tool)
        except ToolValidationError as e:
            raise bad_request(f"tools[{i}]: {e}", f"tools[{i}]") from None
        except RecursionError:
            raise bad_request(
                f"tools[{i}]: the schema is nested too deeply", f"tools[{i}]"
            ) from None
    choice = req.tool_choice
    if choice is None or choice in ("auto", "none"):
        return
    if choice == "required":
        if not req.tools:
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
    if name not in tool_names(req.tools):
        raise bad_request(
            f"tool_choice names {name!r}, which is not among the offered tools", "tool_choice"
        )


def _check_schema_shape(schema: Any, max_depth: int, param: str) -> None:
    """A tool's parameters: nested at most `max_depth` deep, and every `$ref` local
    (`#...`): a remote reference is never fetched, so it cannot be honoured."""
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        v, depth = stack.pop()
        if not isinstance(v, (dict, list)):
            continue
        if depth >= max_depth:
            raise bad_request(
                f"{param}: the parameters schema is nested deeper than {max_depth} levels", param
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


def constraint_of(req: ChatRequest) -> str | dict[str, Any] | None:
    """The decoding constraint: `"required"`, a named-function choice, or None (free)."""
    if req.tools and (req.tool_choice == "required" or isinstance(req.tool_choice, dict)):
        return req.tool_choice
    return None


# -- responses --------------------------------------------------------------------------------


@dataclass
class Generation:
    """What a backend produced for one request: `n` texts and their finish reasons
    (`stop` | `length`), and the token counts (prompt once; completions summed)."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)


def assistant_message(text: str, tools_offered: bool) -> tuple[dict[str, Any], bool]:
    """A completion → the assistant message, and whether it holds tool calls.

    Tool calls are parsed only when tools were offered; malformed blocks stay in
    `content` (the text the model wrote), never a half-parsed call.
    """
    if tools_offered:
        parsed = parse_tool_calls(text)
        if parsed.tool_calls:
            calls = [{**c, "id": f"call_{uuid.uuid4().hex[:24]}"} for c in parsed.tool_calls]
            content = parsed.content or None
            if parsed.errors:  # keep what could not be parsed visible
                content = text
            return {"role": "assistant", "content": content, "tool_calls": calls}, True
    return {"role": "assistant", "content": text}, False


def leaked_tool_call(message: dict[str, Any]) -> bool:
    """True when a `<tool_call>` block ended up in `content` instead of `tool_calls`."""
    return "<tool_call>" in (message.get("content") or "")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_response(req: ChatRequest, gen: Generation) -> dict[str, Any]:
    choices = []
    for i, (text, reason) in enumerate(zip(gen.texts, gen.finish_reasons, strict=True)):
        message, has_calls = assistant_message(text, bool(req.tools))
        finish = "tool_calls" if has_calls and reason == "stop" else reason
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": usage(gen),
    }


def usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def chunk(
    cid: str, model: str, created: int, delta: dict[str, Any], finish: str | None, index: int = 0
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event (`data: ...\\n\\n`)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def models_response(ids: list[str], owner: str = "ttpa-ray") -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": created, "owned_by": owner} for i in ids],
    }
