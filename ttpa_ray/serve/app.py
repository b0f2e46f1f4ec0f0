"""The Ray Serve application: a FastAPI ingress speaking OpenAI's chat-completions API.

`build_app(config)` → a Serve `Application` (also the `import_path` target of a Serve
config file: `ttpa_ray.serve.app:build_app`). Routes: `POST /v1/chat/completions`,
`GET /v1/models`, `GET /healthz`, `GET /stats`, `/openapi.json`, `/docs`.

Admission: each replica answers at most `max_ongoing_requests` at once; the one over the
limit gets 503 in OpenAI's error shape right away (Serve's own router is given twice the
limit, so excess requests reach us to be refused instead of waiting in its queue).
Batching: concurrent non-streaming requests are grouped by `@serve.batch` and run by the
backend as batched `generate` calls; `batching: false` runs each request on its own.
Each request gets `min(max_tokens, context - its prompt tokens)` new tokens whatever its
batch-mates; a prompt that leaves no room (or is over `max_prompt_tokens`) gets a 400
`context_length_exceeded` (param `messages`) on every path, streaming included, and its
batch-mates are served. Whatever fails for one request fails it alone (see the backend).

Order of checks, cheapest first: the API key (`/v1/*`, before the body is read), the body
size (413), UTF-8, JSON, nesting and every `serve.limits` count (400 naming `param`), then
the prompt's length (needs the tokenizer), then generation. Every error, the framework's
own included (404, 405), is in OpenAI's shape. A client that disconnects stops its
generation at the next decoding step.
"""

import asyncio
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ttpa_ray.config import ServeConfig, ServeLimits
from ttpa_ray.ray_utils import remote_args
from ttpa_ray.serve.protocol import (
    ChatRequest,
    Generation,
    OpenAIError,
    assistant_message,
    bad_request,
    chunk,
    completion_id,
    completion_response,
    constraint_of,
    leaked_tool_call,
    models_response,
    parse_body,
    sse,
    text_messages,
    usage,
)

log = logging.getLogger("ttpa_ray")
TOOL_OPEN = "<tool_call>"

api = FastAPI(
    title="ttpa-ray",
    description="OpenAI-compatible chat completions with tool calls (TTPA-tuned models).",
    version="0.1.0",
)


@api.exception_handler(OpenAIError)
async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # the framework's own errors (unknown route, wrong method, unparsable body)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    err = OpenAIError(exc.status_code, str(exc.detail), kind, None, codes.get(exc.status_code))
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


class _Guard:
    """What this replica's ASGI middleware enforces (set by `ChatServer.__init__`; one
    replica per process, so a module global is per replica)."""

    def __init__(self, api_key: str | None, limits: ServeLimits) -> None:
        self.api_key = api_key.encode() if api_key else None
        self.limits = limits


_GUARD: _Guard | None = None


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
        if guard.api_key is not None and "/v1/" in scope.get("path", ""):
            headers = dict(scope.get("headers") or [])
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
        declared = dict(scope.get("headers") or []).get(b"content-length")
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


api.add_middleware(GuardMiddleware)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI says 422; OpenAI says 400 with the offending field as `param`.
    errors = exc.errors()
    first: Any = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
        return JSONResponse(bad_request(message.rstrip(": ")).body(), status_code=400)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return JSONResponse(bad_request(message, param).body(), status_code=400)


def engine_error(exc: Exception) -> OpenAIError:
    """What one request's failure becomes for its client: `context_length_exceeded` (400,
    param `messages`) for a prompt that does not fit; 400 param `tools` for tools that
    cannot be constrained; 400 for any other `EngineError` (the request's fault); 500 for
    anything else (ours; logged, and only this request gets it)."""
    from ttpa_ray.engines.base import EngineError
    from ttpa_ray.engines.hf_engine import ContextLengthError
    from ttpa_ray.serve.backend import ConstraintError

    if isinstance(exc, ContextLengthError):
        return bad_request(exc.detail, "messages", "context_length_exceeded")
    if isinstance(exc, ConstraintError):
        return bad_request(str(exc), "tools")
    if isinstance(exc, EngineError):
        return bad_request(str(exc))
    return OpenAIError(
        500,
        f"the server failed on this request ({type(exc).__name__}); other requests are "
        "not affected",
        "server_error",
        None,
        "internal_error",
    )


class _Stream(StreamingResponse):
    """A streaming response that runs `on_close` however it ends: finished, failed, or
    cancelled because the client went away (its generator may never even start)."""

    def __init__(self, content: Any, on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class Stats:
    """Counters of one replica (also exported as Ray metrics)."""

    def __init__(self) -> None:
        self.requests = 0
        self.rejected_503 = 0
        self.tool_calls = 0
        self.leaked_tool_calls = 0
        self.batches = 0
        self.batched_requests = 0
        self._leaked: Any = None
        try:
            from ray.serve.metrics import Counter

            self._leaked = Counter(
                "ttpa_tool_calls_leaked",
                description="responses whose <tool_call> text ended up in content",
                tag_keys=("model",),
            )
        except Exception:  # metrics are best effort (e.g. outside a replica)
            pass

    def leaked(self, model: str) -> None:
        self.leaked_tool_calls += 1
        if self._leaked is not None:
            self._leaked.inc(tags={"model": model})


@serve.deployment
@serve.ingress(api)
class ChatServer:
    """One replica: the backend (model + adapters) and the HTTP routes."""

    def __init__(self, config_json: str, api_key: str | None = None) -> None:
        from ttpa_ray.serve import app as this_module
        from ttpa_ray.serve.backend import HFChatBackend

        self.cfg = ServeConfig.model_validate_json(config_json)
        # Not `global`: Serve pickles this class by value, so its functions see a copy of
        # the module's globals; the middleware reads the imported module's.
        this_module._GUARD = _Guard(api_key, self.cfg.limits)
        self.backend = HFChatBackend(
            str(self.cfg.model),
            self.cfg.adapters,
            device=self.cfg.device,
            dtype=self.cfg.dtype,
            max_prompt_tokens=self.cfg.max_prompt_tokens,
        )
        self.model_id = self.cfg.resolved_model_id()
        self.ids = [self.model_id, *(f"{self.model_id}:{a}" for a in self.cfg.adapters)]
        self.inflight = 0
        self.stats = Stats()
        batched: Any = self._generate_batched  # serve.batch's wrapper has the setters
        batched.set_max_batch_size(self.cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)

    # -- helpers ---------------------------------------------------------------------------

    def _gen_request(self, req: ChatRequest) -> Any:
        from ttpa_ray.serve.backend import GenRequest

        if req.model not in self.ids:
            raise OpenAIError(
                404,
                f"the model {req.model!r} does not exist; available: {', '.join(self.ids)}",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        adapter = req.model.split(":", 1)[1] if ":" in req.model else None
        context = self.backend.engine.max_length
        if (req.new_tokens or 0) > context:
            raise bad_request(
                f"max_tokens {req.new_tokens} exceeds the model's context of {context} tokens",
                "max_tokens",
            )
        choice = req.tool_choice
        return GenRequest(
            messages=text_messages(req.messages),
            # tool_choice none: the model is not offered tools, so it answers in text
            tools=None if choice == "none" else req.tools,
            constraint=constraint_of(req),
            parallel_tool_calls=req.parallel_tool_calls,
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.new_tokens or self.cfg.default_max_tokens,
            seed=req.seed,
            stop=req.stops,
            adapter=adapter,
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batched(self, reqs: list[Any]) -> list[Any]:
        # never raises: an exception here would fail every request of the batch
        self.stats.batches += 1
        self.stats.batched_requests += len(reqs)
        try:
            return await asyncio.to_thread(self.backend.generate, reqs)
        except Exception as exc:  # the backend isolates requests; this is a last resort
            log.exception("batch of %d failed", len(reqs))
            return [exc] * len(reqs)

    async def _generate(self, gen_req: Any) -> Generation:
        try:
            if self.cfg.batching:
                result = await self._generate_batched(gen_req)
            else:
                result = (await asyncio.to_thread(self.backend.generate, [gen_req]))[0]
        except asyncio.CancelledError:
            gen_req.cancel.set()  # the client is gone: its rows stop at the next step
            raise
        if isinstance(result, Exception):
            raise engine_error(result)
        return result

    async def _prompt(self, gen_req: Any) -> list[int]:
        """The prompt's ids and its grammar, checked before a stream starts (a 400 can
        then be a status, not an event inside a 200 stream)."""

        def check() -> list[int]:
            ids = self.backend.prompt_ids(gen_req)
            self.backend.check_constraint(gen_req)
            return ids

        try:
            return await asyncio.to_thread(check)
        except Exception as exc:
            raise engine_error(exc) from exc

    def _count(self, req: ChatRequest, body: dict[str, Any]) -> None:
        for choice in body["choices"]:
            msg = choice.get("message") or {}
            self.stats.tool_calls += len(msg.get("tool_calls") or [])
            if leaked_tool_call(msg):
                self.stats.leaked(req.model)

    # -- routes ----------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self.ids}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return models_response(self.ids)

    @api.get("/stats")
    async def stats_route(self) -> dict[str, Any]:
        s = self.stats
        return {k: v for k, v in vars(s).items() if not k.startswith("_")} | {
            "inflight": self.inflight
        }

    @api.post(
        "/v1/chat/completions",
        response_model=None,
        # the body is parsed by `parse_body` (limits, UTF-8, depth); documented as usual
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
            }
        },
    )
    async def chat(self, request: Request) -> Any:
        if self.inflight >= self.cfg.max_ongoing_requests:
            self.stats.rejected_503 += 1
            raise OpenAIError(
                503,
                f"the server is at its limit of {self.cfg.max_ongoing_requests} requests in "
                "flight; retry later",
                "server_error",
                None,
                "overloaded",
            )
        self.inflight += 1
        streaming = False
        try:
            self.stats.requests += 1
            body = parse_body(await request.body(), self.cfg.limits)
            gen_req = self._gen_request(body)
            gen_req.cancel = threading.Event()
            if body.stream:
                prompt = await self._prompt(gen_req)
                streaming = True
                return _Stream(
                    self._stream(body, gen_req, prompt),
                    on_close=lambda: self._stream_closed(gen_req),
                    media_type="text/event-stream",
                )
            gen = await self._generate(gen_req)
            out = completion_response(body, gen)
            self._count(body, out)
            return out
        finally:
            if not streaming:
                self.inflight -= 1

    def _stream_closed(self, gen_req: Any) -> None:
        """A stream ended (done, failed or disconnected): stop its generation, count it out."""
        gen_req.cancel.set()
        self.inflight -= 1

    async def _stream(
        self, req: ChatRequest, gen_req: Any, prompt: list[int]
    ) -> AsyncIterator[str]:
        """SSE chunks: content as it is decoded; a completion that turns out to call tools
        sends its calls as one `tool_calls` delta at the end (text that may open a
        `<tool_call>` block is held back, never sent as content). Decoding runs on a
        worker thread, one piece per await, so a cancelled stream stops pulling at once
        and its `cancel` event stops the decoding thread."""
        cid, created = completion_id(), int(time.time())
        if gen_req.n > 1:
            # several choices: generate them together, then send each as chunks
            result = (await asyncio.to_thread(self.backend.generate, [gen_req]))[0]
            if isinstance(result, Exception):
                yield sse(engine_error(result).body())
                return
            for i, text in enumerate(result.texts):
                for event in self._choice_chunks(
                    req, cid, created, i, text, result.finish_reasons[i], role=True
                ):
                    yield event
            final = result
        else:
            yield sse(chunk(cid, req.model, created, {"role": "assistant", "content": ""}, None))
            text, sent, final_gen = "", 0, None
            pieces = self.backend.stream(gen_req, prompt)
            try:
                while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                    if isinstance(piece, Generation):
                        final_gen = piece
                        break
                    text += piece
                    safe = self._streamable(text, bool(req.tools))
                    if safe > sent:
                        delta = {"content": text[sent:safe]}
                        yield sse(chunk(cid, req.model, created, delta, None))
                        sent = safe
            except Exception as exc:
                yield sse(engine_error(exc).body())
                return
            assert final_gen is not None
            full = final_gen.texts[0]
            for event in self._choice_chunks(
                req, cid, created, 0, full, final_gen.finish_reasons[0], sent=sent
            ):
                yield event
            final = final_gen
        if (req.stream_options or {}).get("include_usage"):
            body = chunk(cid, req.model, created, {}, None)
            body["choices"], body["usage"] = [], usage(final)
            yield sse(body)
        yield sse("[DONE]")

    @staticmethod
    def _streamable(text: str, tools: bool) -> int:
        """How much of `text` can be sent as content now: all without tools; with tools,
        up to any `<tool_call>` and not a trailing piece that could start one."""
        if not tools:
            return len(text)
        at = text.find(TOOL_OPEN)
        if at >= 0:
            return at
        for k in range(min(len(TOOL_OPEN) - 1, len(text)), 0, -1):
            if TOOL_OPEN.startswith(text[-k:]):
                return len(text) - k
        return len(text)

    def _choice_chunks(
        self,
        req: ChatRequest,
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
            self.stats.tool_calls += len(calls)
        else:
            if full[sent:]:
                yield sse(chunk(cid, req.model, created, {"content": full[sent:]}, None, index))
            if leaked_tool_call(message):
                self.stats.leaked(req.model)
        finish = "tool_calls" if has_calls and reason == "stop" else reason
        yield sse(chunk(cid, req.model, created, {}, finish, index))


def serve_options(cfg: ServeConfig) -> dict[str, Any]:
    """Deployment options from the config (replicas, resources, router limit)."""
    return {
        "num_replicas": cfg.num_replicas,
        # Twice our own limit: requests over it reach the replica and get our 503.
        "max_ongoing_requests": 2 * cfg.max_ongoing_requests,
        "ray_actor_options": remote_args(
            cfg.num_cpus, cfg.num_gpus, cfg.accelerator_type, cfg.resources
        ),
    }


def resolve_api_key(cfg: ServeConfig, api_key: str | None = None) -> str | None:
    if api_key:
        return api_key
    if cfg.api_key_env:
        value = os.environ.get(cfg.api_key_env)
        if not value:
            raise ValueError(
                f"serve.api_key_env: environment variable {cfg.api_key_env} is not set"
            )
        return value
    return None


def build_app(args: dict[str, Any] | ServeConfig) -> Any:
    """The Serve config file's `import_path` target: Serve calls an application builder
    with exactly one argument (the file's `args`, a `ServeConfig` dict)."""
    return make_app(args)


def make_app(args: dict[str, Any] | ServeConfig, api_key: str | None = None) -> Any:
    """A Serve application for `args` (a `ServeConfig` or its dict) with an optional API
    key. `hf` → our FastAPI app; `vllm` → `ray.serve.llm`'s OpenAI app."""
    cfg = args if isinstance(args, ServeConfig) else ServeConfig.model_validate(args)
    if cfg.backend == "vllm":
        from ttpa_ray.serve.llm_config import build_vllm_app

        return build_vllm_app(cfg)
    if not cfg.model:
        raise ValueError("serve.model: set the model directory")
    key = resolve_api_key(cfg, api_key)
    deployment: Any = ChatServer  # a serve.Deployment (the decorator's type is lost on mypy)
    return deployment.options(**serve_options(cfg)).bind(cfg.model_dump_json(), key)
