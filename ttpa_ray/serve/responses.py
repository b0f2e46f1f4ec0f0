"""The OpenAI protocol, response side: chat and text completions, stream chunks, models.

Pure Python. The shapes are OpenAI's (tests/serve/test_protocol.py validates them
against the `openai` package's own pydantic types).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ttpa_ray.schema.tool_call_text import TOOL_CALL_OPEN, parse_tool_calls
from ttpa_ray.serve.protocol import ChatRequest, CompletionRequest


@dataclass
class TokenLogprob:
    """One generated token: its text (`tokenizer.decode([id])`: a token holding part of a
    multi-byte character reads as U+FFFD, as in vLLM), its log-probability (finite:
    -inf is sent as -9999.0), the most likely alternatives at its position, best first
    (each without alternatives of its own), and its id (not sent)."""

    token: str
    logprob: float
    top: list[TokenLogprob] = field(default_factory=list)
    token_id: int | None = None

    @property
    def bytes(self) -> list[int]:
        return list(self.token.encode("utf-8"))


@dataclass
class Generation:
    """What a backend produced for one request: `n` texts and their finish reasons
    (`stop` | `length`), the token counts (prompt once; completions summed) and, when
    asked for, each choice's tokens with their log-probabilities."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[list[TokenLogprob]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion."""

    def entry(t: TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": t.logprob, "bytes": t.bytes}

    return {
        "content": [{**entry(t), "top_logprobs": [entry(a) for a in t.top]} for t in tokens],
        "refusal": None,
    }


def text_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[i].logprobs` of a legacy completion. `top_logprobs[i]` maps the top
    alternatives' texts to their log-probabilities, plus the chosen token (so up to k+1
    entries, as OpenAI documents). `text_offset[i]`: where token i starts in `text`,
    counted in characters of the token texts (as vLLM does)."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            {**{a.token: a.logprob for a in t.top}, t.token: t.logprob} for t in tokens
        ],
        "text_offset": offsets,
    }


def sendable_length(text: str, markers: list[str]) -> int:
    """How much of a text decoded so far may be streamed: up to the earliest `marker`, and
    without a tail that may be the beginning of one (it waits for the next token). Used
    for stop strings (never sent) and for `<tool_call>` (never sent as content)."""
    markers = [m for m in markers if m]
    cut = min((i for m in markers if (i := text.find(m)) >= 0), default=-1)
    if cut >= 0:
        return cut
    hold = max(
        (k for m in markers for k in range(1, min(len(m) - 1, len(text)) + 1)
         if text.endswith(m[:k])),
        default=0,
    )  # fmt: skip
    return len(text) - hold


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
    return TOOL_CALL_OPEN in (message.get("content") or "")


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def completion_response(req: ChatRequest, gen: Generation) -> dict[str, Any]:
    """A `chat.completion`. Logprobs cover every generated token of a choice up to its
    end (tool-call text included, as vLLM reports them), not the end-of-turn token."""
    choices = []
    for i, (text, reason) in enumerate(zip(gen.texts, gen.finish_reasons, strict=True)):
        message, has_calls = assistant_message(text, bool(req.tools))
        finish = "tool_calls" if has_calls and reason == "stop" else reason
        logprobs = chat_logprobs(gen.logprobs[i]) if gen.logprobs is not None else None
        choices.append(
            {"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs}
        )
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": usage(gen),
    }


def text_completion_response(req: CompletionRequest, gen: Generation) -> dict[str, Any]:
    """A legacy `text_completion`."""
    choices = [
        {
            "index": i,
            "text": text,
            "finish_reason": reason,
            "logprobs": text_logprobs(gen.logprobs[i]) if gen.logprobs is not None else None,
        }
        for i, (text, reason) in enumerate(zip(gen.texts, gen.finish_reasons, strict=True))
    ]
    return {
        "id": completion_id("cmpl"),
        "object": "text_completion",
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
    """One `chat.completion.chunk`."""
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def text_chunk(
    cid: str, model: str, created: int, text: str, finish: str | None, index: int = 0
) -> dict[str, Any]:
    """One streamed legacy completion event (OpenAI sends `text_completion` objects)."""
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def usage_chunk(first: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """The last event of a stream with `stream_options.include_usage`: no choices."""
    return {**first, "choices": [], "usage": usage(gen)}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event (`data: ...\\n\\n`)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def model_object(model_id: str, created: int, owner: str = "ttpa-ray") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def models_response(ids: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(i, created) for i in ids]}
