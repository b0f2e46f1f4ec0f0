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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ttpa_ray.schema.tool_call_text import parse_tool_calls
from ttpa_ray.schema.tools import ToolValidationError, validate_tool

ROLES = ("system", "user", "assistant", "tool", "developer")


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
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

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


def parse_request(body: Any) -> ChatRequest:
    """A JSON body → a validated request; raises a 400 `OpenAIError` naming the field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        message, param = _describe(e)
        raise bad_request(message, param) from None
    check_messages(req.messages)
    check_tools(req)
    return req


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
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(
                f"messages[{i}].content must be a string or a list of parts",
                f"messages[{i}].content",
            )
        for j, call in enumerate(m.get("tool_calls") or []):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise bad_request(
                    f"messages[{i}].tool_calls[{j}] needs function.name",
                    f"messages[{i}].tool_calls",
                )
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    json.loads(args or "{}")
                except ValueError:
                    raise bad_request(
                        f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON",
                        f"messages[{i}].tool_calls",
                    ) from None


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t.get("function", t).get("name") for t in tools or []]


def check_tools(req: ChatRequest) -> None:
    """Every tool a valid OpenAI function tool; `tool_choice` valid and naming an offered one."""
    for i, tool in enumerate(req.tools or []):
        try:
            validate_tool(tool)
        except ToolValidationError as e:
            raise bad_request(f"tools[{i}]: {e}", f"tools[{i}]") from None
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
    name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
    if not isinstance(name, str):
        raise bad_request(
            'tool_choice must be {"type": "function", "function": {"name": ...}}', "tool_choice"
        )
    if name not in tool_names(req.tools):
        raise bad_request(
            f"tool_choice names {name!r}, which is not among the offered tools", "tool_choice"
        )


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
