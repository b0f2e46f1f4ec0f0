"""Server-sent events for `stream: true`: chat chunks and legacy completion chunks.

Decoding runs on a worker thread, one piece per await, so a cancelled stream stops
pulling at once, and `Stream` runs its `on_close` however the response ends (finished,
failed, or the client gone before the first byte): the replica sets the request's
`cancel` event there (its rows stop at the next decoding step) and counts it out.
An error after the stream started is sent as one event in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi.responses import StreamingResponse

from ttpa_ray.schema.tool_call_text import TOOL_CALL_OPEN
from ttpa_ray.serve.errors import engine_error
from ttpa_ray.serve.protocol import ChatRequest, CompletionRequest
from ttpa_ray.serve.responses import (
    Generation,
    assistant_message,
    chunk,
    completion_id,
    leaked_tool_call,
    sendable_length,
    sse,
    text_chunk,
    usage_chunk,
)


class Stream(StreamingResponse):
    """A streaming response that runs `on_close` however it ends: finished, failed, or
    cancelled because the client went away (its generator may never even start)."""

    def __init__(self, content: Any, on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def streamable(text: str, tools: bool) -> int:
    """How much of `text` can be sent as content now: all without tools; with tools, up
    to any `<tool_call>` and not a trailing piece that could start one."""
    return sendable_length(text, [TOOL_CALL_OPEN]) if tools else len(text)


async def _pieces(backend: Any, gen_req: Any, prompt: list[int]) -> AsyncIterator[str | Generation]:
    """The backend's stream of one choice, pulled from a worker thread one piece at a time."""
    pieces = backend.stream(gen_req, prompt)
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        yield piece


async def chat_events(
    req: ChatRequest, gen_req: Any, prompt: list[int], backend: Any, stats: Any
) -> AsyncIterator[str]:
    """Chat chunks: content as it is decoded; a completion that turns out to call tools
    sends its calls as one `tool_calls` delta at the end (text that may open a
    `<tool_call>` block is held back, never sent as content). `n > 1`: the choices are
    generated together, then each is sent."""
    cid, created = completion_id(), int(time.time())
    if gen_req.n > 1:
        result = (await asyncio.to_thread(backend.generate, [gen_req]))[0]
        if isinstance(result, Exception):
            yield sse(engine_error(result).body())
            return
        for i, text in enumerate(result.texts):
            for event in _choice_chunks(
                req, stats, cid, created, i, text, result.finish_reasons[i], role=True
            ):
                yield event
        final = result
    else:
        yield sse(chunk(cid, req.model, created, {"role": "assistant", "content": ""}, None))
        text, sent, final_gen = "", 0, None
        try:
            async for piece in _pieces(backend, gen_req, prompt):
                if isinstance(piece, Generation):
                    final_gen = piece
                    break
                text += piece
                safe = streamable(text, bool(req.tools))
                if safe > sent:
                    yield sse(chunk(cid, req.model, created, {"content": text[sent:safe]}, None))
                    sent = safe
        except Exception as exc:
            yield sse(engine_error(exc).body())
            return
        assert final_gen is not None
        full = final_gen.texts[0]
        for event in _choice_chunks(
            req, stats, cid, created, 0, full, final_gen.finish_reasons[0], sent=sent
        ):
            yield event
        final = final_gen
    if req.include_usage:
        yield sse(usage_chunk(chunk(cid, req.model, created, {}, None), final))
    yield sse("[DONE]")


def _choice_chunks(
    req: ChatRequest,
    stats: Any,
    cid: str,
    created: int,
    index: int,
    full: str,
    reason: str,
    sent: int = 0,
    role: bool = False,
) -> Iterator[str]:
    """The rest of one choice after `sent` characters were streamed: content, or its
    tool calls as one delta, then the finish chunk."""
    message, has_calls = assistant_message(full, bool(req.tools))
    if role:
        yield sse(chunk(cid, req.model, created, {"role": "assistant"}, None, index))
    content = message.get("content") or ""
    if has_calls:
        # the content before the first call was streamed already (up to `sent`)
        rest = content[sent:] if content.startswith(full[:sent]) else ""
        if rest:
            yield sse(chunk(cid, req.model, created, {"content": rest}, None, index))
        calls = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
        yield sse(chunk(cid, req.model, created, {"tool_calls": calls}, None, index))
        stats.tool_calls += len(calls)
    else:
        if full[sent:]:
            yield sse(chunk(cid, req.model, created, {"content": full[sent:]}, None, index))
        if leaked_tool_call(message):
            stats.leaked(req.model)
    finish = "tool_calls" if has_calls and reason == "stop" else reason
    yield sse(chunk(cid, req.model, created, {}, finish, index))


async def completion_events(
    req: CompletionRequest, gen_req: Any, prompt: list[int], backend: Any
) -> AsyncIterator[str]:
    """Legacy completion chunks (`text_completion` objects): text as it is decoded, then
    a chunk with the choice's `finish_reason`. `n > 1`: generated together, then sent."""
    cid, created = completion_id("cmpl"), int(time.time())
    final: Generation | None = None
    try:
        if gen_req.n > 1:
            result = (await asyncio.to_thread(backend.generate, [gen_req]))[0]
            if isinstance(result, Exception):
                raise result
            for i, text in enumerate(result.texts):
                if text:
                    yield sse(text_chunk(cid, req.model, created, text, None, i))
                yield sse(text_chunk(cid, req.model, created, "", result.finish_reasons[i], i))
            final = result
        else:
            async for piece in _pieces(backend, gen_req, prompt):
                if isinstance(piece, Generation):
                    final = piece
                    break
                yield sse(text_chunk(cid, req.model, created, piece, None))
            assert final is not None
            yield sse(text_chunk(cid, req.model, created, "", final.finish_reasons[0]))
    except Exception as exc:
        yield sse(engine_error(exc, "prompt").body())
        return
    if req.include_usage:
        yield sse(usage_chunk(text_chunk(cid, req.model, created, "", None), final))
    yield sse("[DONE]")
