"""An engine over any OpenAI-compatible `POST {base_url}/chat/completions` endpoint.

Built on the official `openai` SDK: one sync client, shared by a thread pool of at most
`max_concurrency` requests in flight, one HTTP request per `ChatRequest` (with `n`
choices). The SDK builds the request, parses the response and the server's error, applies
the timeout and follows redirects through httpx2, which drops the `Authorization` header
when a redirect leaves the origin (scheme, host or port; only an http → https upgrade of
the same host keeps it).

Retrying stays here, with the SDK's own retries off (`max_retries=0`): the SDK waits out a
`Retry-After` only within (0, 120] s and gives up at once on a longer one, and its backoff
(0.5 s doubling to 8 s) cannot be set. Ours retries connection errors, timeouts, 408, 409,
429 and 5xx with `backoff_s` doubling and jitter, honours a `Retry-After` in seconds capped
at 30 s (other values fall back to the backoff), and counts attempts in `stats`; any other
4xx fails at once with the server's message. Tool calls in a response are rendered as
`<tool_call>` text (`ttpa_ray.schema.tool_call_text`), so every engine returns one text
format.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletion

from ttpa_ray.engines.base import ChatRequest, EngineError, GenerationParams
from ttpa_ray.schema.tool_call_text import render_assistant_text

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# A longer `Retry-After` is cut to this: one retry waits at most this long.
MAX_RETRY_AFTER_S = 30.0


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


@dataclass
class OpenAIStats:
    """Counters over the engine's lifetime (updated under a lock)."""

    requests: int = 0  # HTTP attempts sent
    retries: int = 0  # attempts after the first, over all requests
    failures: int = 0  # requests that raised EngineError


def _server_message(exc: openai.APIStatusError) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the body (≤ 500 chars).
    The SDK has already unwrapped `error` into `exc.body`."""
    if isinstance(exc.body, Mapping) and "message" in exc.body:
        return str(exc.body["message"])[:500]
    if isinstance(exc.body, str):
        return exc.body[:500]
    return exc.response.text[:500]


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
        # The SDK fills what is unset from OPENAI_* variables (OPENAI_API_KEY, OPENAI_ORG_ID,
        # OPENAI_PROJECT_ID). This endpoint is usually not OpenAI's, so the user's OpenAI
        # credentials must not reach it: the key is given (a placeholder when there is none,
        # never sent) and each request sets or omits `Authorization` and the account headers.
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "no-key",
            max_retries=0,
            timeout=timeout_s,
        )
        self._headers: dict[str, str | openai.Omit] = {
            "Authorization": f"Bearer {api_key}" if api_key else openai.omit,
            "OpenAI-Organization": openai.omit,
            "OpenAI-Project": openai.omit,
        }

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

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP attempt; the SDK's exceptions propagate."""
        rest = {k: v for k, v in body.items() if k not in ("model", "messages")}
        self._count(requests=1)
        # Fields go as `extra_body`, not through the SDK's typed parameters, so the JSON sent
        # is `payload()` as it is (tests/test_prompt_identity.py takes it as what is served).
        completion = self._client.chat.completions.create(
            model=body["model"],
            messages=cast(Any, body["messages"]),
            extra_body=rest,
            extra_headers=self._headers,
        )
        # The SDK hands back a body that is not a JSON object as it came (text, a list).
        if not isinstance(completion, ChatCompletion):
            raise EngineError(f"response from {self.url} is not a JSON object: {completion!r:.200}")
        return completion.to_dict()

    def _backoff(self, retry: int, retry_after: Any) -> float:
        seconds = retry_after_s(retry_after)
        if seconds is not None:
            return seconds
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.5)
        return self.backoff_s * 2 ** (retry - 1) * jitter

    def _fail(self, message: str) -> EngineError:
        self._count(failures=1)
        return EngineError(message)

    def choices(
        self, request: ChatRequest, params: GenerationParams, **extra: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The `params.n` choices of one request, in index order, and the response's
        `usage` ({} if absent), retrying as documented on the class. `extra` adds body
        fields, e.g. `logprobs=True`."""
        body = {**self.payload(request, params), **extra}
        label = f"request {request.request_id!r}" if request.request_id else "request"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            retry_after: str | None = None
            try:
                response = self._post_once(body)
                break
            except openai.APIStatusError as exc:
                status, message = exc.status_code, _server_message(exc)
                if status not in RETRY_STATUS and status < 500:
                    raise self._fail(f"{label}: HTTP {status} from {self.url}: {message}") from exc
                last = f"HTTP {status}: {message}"
                retry_after = exc.response.headers.get("Retry-After")
            except openai.APITimeoutError:
                last = f"timed out after {self.timeout_s}s"
            except openai.APIConnectionError as exc:  # refused, reset, DNS
                last = f"connection error: {exc.__cause__ or exc}"
            except (EngineError, openai.OpenAIError) as exc:  # a response we cannot use
                raise self._fail(f"{label}: {exc}") from exc
            if attempt < self.max_retries:
                time.sleep(self._backoff(attempt + 1, retry_after))
        else:
            raise self._fail(
                f"{label}: failed after {self.max_retries + 1} attempts to {self.url}: {last}"
            )
        choices = response.get("choices")
        if not isinstance(choices, list) or len(choices) < params.n:
            got = len(choices) if isinstance(choices, list) else 0
            raise self._fail(f"{label}: server returned {got} choices for n={params.n}")
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
