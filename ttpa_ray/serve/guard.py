"""The replica's ASGI guard: the API key, then the body size, before any of the body is
parsed (docs/serve.md, "Limits and security").

Pure ASGI (no FastAPI routing): a refused request never reaches the app. What it
enforces is set per replica by `install` (one replica per process, so a module global is
per replica; the deployment class is pickled by value, so it must call `install` on this
imported module rather than set a global of its own copy).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse

from ttpa_ray.config import ServeLimits
from ttpa_ray.serve.errors import OpenAIError


class _Guard:
    """What this replica's middleware enforces."""

    def __init__(self, api_key: str | None, limits: ServeLimits) -> None:
        self.api_key = api_key.encode() if api_key else None
        self.limits = limits


_GUARD: _Guard | None = None


def install(api_key: str | None, limits: ServeLimits) -> None:
    """Set what this process's `GuardMiddleware` enforces (called by the replica)."""
    global _GUARD
    _GUARD = _Guard(api_key, limits)


async def _drain(receive: Any, cap: int) -> bool:
    """Read and drop the rest of a refused body, up to `cap` bytes: a client that sends
    its whole body before reading (most do) then gets our answer instead of a reset
    connection. False when the body is larger than `cap` (the connection is closed)."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        seen += len(message.get("body", b""))
        if seen > cap:
            return False
        if not message.get("more_body"):
            return True


async def _reply(send: Any, err: OpenAIError, headers: list[tuple[bytes, bytes]]) -> None:
    body = JSONResponse(err.body()).body
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Pure ASGI middleware: the API key first (`/v1/*`, constant-time comparison), then
    the body size — both before any of the body is parsed. The body is read here up to
    `max_body_bytes` (413 beyond, whatever Content-Length says) and replayed to the app.
    A refused body is drained (never stored) up to `DRAIN_FACTOR` times the limit, so the
    client reads the refusal; past that the connection is closed."""

    DRAIN_FACTOR = 16

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        guard = _GUARD
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if guard.api_key is not None and "/v1/" in scope.get("path", ""):
            auth = headers.get(b"authorization", b"")
            token = auth[7:] if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, guard.api_key):
                err = OpenAIError(
                    401,
                    "missing or wrong API key (send 'Authorization: Bearer <key>')",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                )
                drained = await _drain(receive, self.DRAIN_FACTOR * guard.limits.max_body_bytes)
                close = [] if drained else [(b"connection", b"close")]
                await _reply(send, err, [(b"www-authenticate", b"Bearer"), *close])
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = guard.limits.max_body_bytes
        too_large = OpenAIError(
            413,
            f"the request body is over the limit of {limit} bytes (serve.limits.max_body_bytes)",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        cap = self.DRAIN_FACTOR * limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            drained = int(declared) <= cap and await _drain(receive, cap)
            await _reply(send, too_large, [] if drained else [(b"connection", b"close")])
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > limit:
                chunks.clear()
                drained = not message.get("more_body") or await _drain(receive, cap - size)
                await _reply(send, too_large, [] if drained else [(b"connection", b"close")])
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: http.disconnect, as the app expects

        await self.app(scope, replay, send)
