"""An engine over any OpenAI-compatible `POST {base_url}/chat/completions` endpoint.

Standard library only (`urllib` + a thread pool): `httpx` is not a dependency of the
package. One HTTP request per `ChatRequest` (with `n` choices); at most `max_concurrency`
in flight. Retries with exponential backoff and jitter on connection errors, timeouts, 429
and 5xx (honouring a `Retry-After` in seconds, capped; other values fall back to the
backoff); any other 4xx fails at once with the server's message. A redirect to another
origin (scheme, host or port) does not carry the `Authorization` header. Tool calls in a
response are rendered as `<tool_call>` text (`ttpa_ray.schema.tool_call_text`), so every
engine returns one text format.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ttpa_ray.engines.base import ChatRequest, EngineError, GenerationParams
from ttpa_ray.schema.tool_call_text import render_assistant_text

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# A server asking for a longer pause than this is treated as down, not throttled.
MAX_RETRY_AFTER_S = 30.0


class _Retryable(Exception):
    """A failure worth another try (connection, timeout, 429, 5xx)."""


def retry_after_s(value: Any) -> float | None:
    """A `Retry-After` header as a pause in seconds within [0, MAX_RETRY_AFTER_S], or None
    when it is absent or not a finite, non-negative number (an HTTP date, garbage, -5,
    nan, inf): the caller then uses its own backoff."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a malformed port: no origin to share with anything
        port = -1
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port if port is not None else default


class _SameOriginAuthRedirect(urllib.request.HTTPRedirectHandler):
    """urllib's redirects copy every request header; the API key must not follow a
    redirect to another scheme, host or port (another server, or plain HTTP)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


@dataclass
class OpenAIStats:
    """Counters over the engine's lifetime (updated under a lock)."""

    requests: int = 0  # HTTP attempts sent
    retries: int = 0  # attempts after the first, over all requests
    failures: int = 0  # requests that raised EngineError


def _server_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the body (≤ 500 chars)."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, Mapping):
        err = data.get("error", data)
        if isinstance(err, Mapping) and "message" in err:
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
    return text[:500]


def choice_logprob(choice: Mapping[str, Any]) -> float | None:
    """The summed log-probability of a choice's tokens (`logprobs.content[].logprob`), or
    None when the server sent none."""
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice, Mapping) else None
    if not isinstance(content, list) or not content:
        return None
    try:
        return float(sum(float(t["logprob"]) for t in content))
    except (KeyError, TypeError, ValueError):
        return None


def choice_text(choice: Mapping[str, Any]) -> str:
    """One choice's text: `message.content`, plus `<tool_call>` blocks for its `tool_calls`."""
    message = choice.get("message") or {}
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    tool_calls = message.get("tool_calls") or []
    try:
        return render_assistant_text(content if isinstance(content, str) else None, tool_calls)
    except (KeyError, TypeError) as exc:
        raise EngineError(f"malformed tool_calls in response: {tool_calls!r}") from exc


class OpenAIEngine:
    """`TextEngine` over an OpenAI-compatible chat completions endpoint.

    `base_url` ends before `/chat/completions` (e.g. `http://127.0.0.1:8000/v1`).
    `timeout_s` applies to each socket operation (connect, each read), not to the whole
    response. `max_retries` extra attempts follow the first; backoff before retry k
    (1-based) is `backoff_s * 2**(k-1)`, times a random factor in [0.5, 1.5).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 60,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not (math.isfinite(backoff_s) and backoff_s >= 0):
            raise ValueError(f"backoff_s must be a finite number >= 0, got {backoff_s}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.stats = OpenAIStats()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._opener = urllib.request.build_opener(_SameOriginAuthRedirect)

    def payload(self, request: ChatRequest, params: GenerationParams) -> dict[str, Any]:
        """The JSON body for one request (`tools`, `seed`, `stop` only when set)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if request.tools:
            body["tools"] = request.tools
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = params.stop
        return body

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + delta)

    def _post_once(self, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        self._count(requests=1)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            message = _server_message(exc.read() or b"")
            if exc.code in RETRY_STATUS or exc.code >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                raise _Retryable(f"HTTP {exc.code}: {message}", retry_after) from exc
            raise EngineError(f"HTTP {exc.code} from {self.url}: {message}") from exc
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {self.timeout_s}s") from exc
        except urllib.error.URLError as exc:  # connection refused/reset, DNS, timeout on connect
            raise _Retryable(f"connection error: {exc.reason}") from exc
        except (ConnectionError, OSError) as exc:  # reset while reading the body
            raise _Retryable(f"connection error: {exc}") from exc
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise EngineError(f"response from {self.url} is not JSON: {body[:200]!r}") from exc
        if not isinstance(parsed, dict):
            raise EngineError(f"response from {self.url} is not a JSON object")
        return parsed

    def _backoff(self, retry: int, retry_after: Any) -> float:
        seconds = retry_after_s(retry_after)
        if seconds is not None:
            return seconds
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.5)
        return self.backoff_s * 2 ** (retry - 1) * jitter

    def choices(
        self, request: ChatRequest, params: GenerationParams, **extra: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The `params.n` choices of one request, in index order, and the response's
        `usage` ({} if absent), retrying as documented on the class. `extra` adds body
        fields, e.g. `logprobs=True`."""
        body = {**self.payload(request, params), **extra}
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        label = f"request {request.request_id!r}" if request.request_id else "request"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            try:
                response = self._post_once(data)
                break
            except _Retryable as exc:
                last = str(exc.args[0])
                if attempt < self.max_retries:
                    time.sleep(
                        self._backoff(attempt + 1, exc.args[1] if len(exc.args) > 1 else None)
                    )
            except EngineError as exc:
                self._count(failures=1)
                raise EngineError(f"{label}: {exc}") from exc
        else:
            self._count(failures=1)
            raise EngineError(
                f"{label}: failed after {self.max_retries + 1} attempts to {self.url}: {last}"
            )
        choices = response.get("choices")
        if not isinstance(choices, list) or len(choices) < params.n:
            self._count(failures=1)
            got = len(choices) if isinstance(choices, list) else 0
            raise EngineError(f"{label}: server returned {got} choices for n={params.n}")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        usage = response.get("usage")
        return choices[: params.n], usage if isinstance(usage, dict) else {}

    def complete(self, request: ChatRequest, params: GenerationParams) -> list[str]:
        """The `params.n` texts for one request (retrying as documented on the class)."""
        return [choice_text(c) for c in self.choices(request, params)[0]]

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[list[str]]:
        """`params.n` texts per request, in request order; the first failure raises."""
        if not requests:
            return []
        workers = min(self.max_concurrency, len(requests))
        if workers == 1:
            return [self.complete(r, params) for r in requests]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-engine")
        try:
            futures = [pool.submit(self.complete, r, params) for r in requests]
            return [f.result() for f in futures]
        finally:
            # On the first failure, requests not yet sent are dropped, not sent for nothing.
            pool.shutdown(wait=True, cancel_futures=True)
