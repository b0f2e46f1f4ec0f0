"""The Ray Serve application: a FastAPI ingress speaking OpenAI's API.

`build_app(config)` → a Serve `Application` (also the `import_path` target of a Serve
config file: `ttpa_ray.serve.app:build_app`). Routes: `POST /v1/chat/completions`,
`POST /v1/completions` (legacy: a text prompt sent as is), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /healthz`, `GET /stats`, `/openapi.json`, `/docs`.

Admission: each replica answers at most `max_ongoing_requests` at once; the one over the
limit gets 503 in OpenAI's error shape right away (Serve's own router is given twice the
limit, so excess requests reach us to be refused instead of waiting in its queue).
Batching: concurrent non-streaming requests (both routes) are grouped by `@serve.batch`
and run by the backend as batched `generate` calls; `batching: false` runs each request
on its own. Each request gets `min(max_tokens, context - its prompt tokens)` new tokens
whatever its batch-mates; a prompt that leaves no room (or is over `max_prompt_tokens`)
gets a 400 `context_length_exceeded` (param `messages`, or `prompt`) on every path,
streaming included, and its batch-mates are served. Whatever fails for one request fails
it alone (see the backend).

Order of checks, cheapest first: the API key (`/v1/*`, before the body is read), the body
size (413) (both in `guard.py`), UTF-8, JSON, nesting, refused parameters and every
`serve.limits` count (400 naming `param`; `protocol.py`), then the prompt's length (needs
the tokenizer), then generation. Every error, the framework's own included (404, 405,
422 → 400), is in OpenAI's shape. A client that disconnects stops its generation at the
next decoding step (`streaming.py`).
"""

import asyncio
import logging
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ttpa_ray.config import ServeConfig
from ttpa_ray.ray_utils import remote_args
from ttpa_ray.serve.checks import text_messages
from ttpa_ray.serve.errors import OpenAIError, bad_request, engine_error, model_not_found
from ttpa_ray.serve.guard import GuardMiddleware
from ttpa_ray.serve.protocol import (
    PARAMETERS,
    ChatRequest,
    CompletionRequest,
    constraint_of,
    parse_body,
    parse_completion_body,
    response_schema,
)
from ttpa_ray.serve.responses import (
    Generation,
    completion_response,
    leaked_tool_call,
    model_object,
    models_response,
    text_completion_response,
)
from ttpa_ray.serve.streaming import Stream, chat_events, completion_events

log = logging.getLogger("ttpa_ray")

api = FastAPI(
    title="ttpa-ray",
    description="OpenAI-compatible chat and text completions with tool calls (TTPA-tuned models).",
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


def _documented_body(model: Any) -> dict[str, Any]:
    # the body is parsed by `parse_body`/`parse_completion_body` (limits, UTF-8, depth,
    # refused parameters); documented as usual
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _prompt_param(gen_req: Any) -> str:
    """The field a prompt that does not fit is blamed on. (Defined before `ChatServer`:
    Serve pickles the class by value, and a global defined after it is missing on the
    replica.)"""
    return "prompt" if gen_req.prompt is not None else "messages"


@serve.deployment
@serve.ingress(api)
class ChatServer:
    """One replica: the backend (model + adapters) and the HTTP routes."""

    def __init__(self, config_json: str, api_key: str | None = None) -> None:
        from ttpa_ray.serve import guard
        from ttpa_ray.serve.backend import HFChatBackend

        self.cfg = ServeConfig.model_validate_json(config_json)
        guard.install(api_key, self.cfg.limits)
        self.backend = HFChatBackend(
            str(self.cfg.model),
            self.cfg.adapters,
            device=self.cfg.device,
            dtype=self.cfg.dtype,
            max_prompt_tokens=self.cfg.max_prompt_tokens,
        )
        self.model_id = self.cfg.resolved_model_id()
        self.ids = [self.model_id, *(f"{self.model_id}:{a}" for a in self.cfg.adapters)]
        self.created = int(time.time())
        self.inflight = 0
        self.stats = Stats()
        self._unknown_seen: set[tuple[str, str]] = set()
        batched: Any = self._generate_batched  # serve.batch's wrapper has the setters
        batched.set_max_batch_size(self.cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)

    # -- requests --------------------------------------------------------------------------

    def _sampling(self, req: ChatRequest | CompletionRequest) -> dict[str, Any]:
        """The GenRequest fields both routes share; 404 for an unknown model id."""
        if req.model not in self.ids:
            raise model_not_found(req.model, self.ids)
        context = self.backend.engine.max_length
        if (req.new_tokens or 0) > context:
            raise bad_request(
                f"max_tokens {req.new_tokens} exceeds the model's context of {context} tokens",
                "max_tokens",
            )
        return {
            "n": req.n,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.new_tokens or self.cfg.default_max_tokens,
            "seed": req.seed,
            "stop": req.stops,
            "adapter": req.model.split(":", 1)[1] if ":" in req.model else None,
            "response_schema": response_schema(req, self.cfg.limits),
        }

    def _chat_request(self, req: ChatRequest) -> Any:
        from ttpa_ray.serve.backend import GenRequest

        choice = req.tool_choice
        return GenRequest(
            messages=text_messages(req.messages),
            # tool_choice none: the model is not offered tools, so it answers in text
            tools=None if choice == "none" else req.tools,
            constraint=constraint_of(req),
            parallel_tool_calls=req.parallel_tool_calls,
            logprobs=req.top_k_logprobs,
            **self._sampling(req),
        )

    def _text_request(self, req: CompletionRequest) -> Any:
        from ttpa_ray.serve.backend import GenRequest

        return GenRequest(prompt=req.text, logprobs=req.logprobs, **self._sampling(req))

    def _log_unknown(self, kind: str, req: ChatRequest | CompletionRequest) -> None:
        """Fields in no set of `PARAMETERS` are ignored; say so once per name."""
        for name in PARAMETERS[kind].unknown(req.model_extra or {}):
            if (kind, name) not in self._unknown_seen:
                self._unknown_seen.add((kind, name))
                log.warning("ignoring the unknown request field %r (%s)", name, kind)

    # No sizes here: `__init__` sets them from `serve.max_batch_size` and
    # `serve.batch_wait_timeout_s` (the config is the one place they are written).
    @serve.batch
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
            raise engine_error(result, _prompt_param(gen_req))
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
            raise engine_error(exc, _prompt_param(gen_req)) from exc

    def _count(self, body: dict[str, Any]) -> None:
        for choice in body["choices"]:
            msg = choice.get("message") or {}
            self.stats.tool_calls += len(msg.get("tool_calls") or [])
            if leaked_tool_call(msg):
                self.stats.leaked(body["model"])

    async def _handle(self, request: Request, kind: str) -> Any:
        """One request of either route: admission (503), parsing (400), then a stream
        or a batched generation. `inflight` is exact: a stream is counted out by its
        `on_close`, everything else here."""
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
            raw = await request.body()
            body: Any
            if kind == "chat":
                body = parse_body(raw, self.cfg.limits)
                gen_req = self._chat_request(body)
            else:
                body = parse_completion_body(raw, self.cfg.limits)
                gen_req = self._text_request(body)
            self._log_unknown(kind, body)
            gen_req.cancel = threading.Event()
            if body.stream:
                prompt = await self._prompt(gen_req)
                events = (
                    chat_events(body, gen_req, prompt, self.backend, self.stats)
                    if kind == "chat"
                    else completion_events(body, gen_req, prompt, self.backend)
                )
                streaming = True
                return Stream(events, on_close=lambda: self._stream_closed(gen_req))
            gen = await self._generate(gen_req)
            if kind == "completions":
                return text_completion_response(body, gen)
            out = completion_response(body, gen)
            self._count(out)
            return out
        finally:
            if not streaming:
                self.inflight -= 1

    def _stream_closed(self, gen_req: Any) -> None:
        """A stream ended (done, failed or disconnected): stop its generation, count it out."""
        gen_req.cancel.set()
        self.inflight -= 1

    # -- routes ----------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self.ids}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return models_response(self.ids, self.created)

    @api.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> dict[str, Any]:
        # `:path`: adapter ids hold ':' and a model id may hold '/'
        if model_id not in self.ids:
            raise model_not_found(model_id, self.ids)
        return model_object(model_id, self.created)

    @api.get("/stats")
    async def stats_route(self) -> dict[str, Any]:
        s = self.stats
        return {k: v for k, v in vars(s).items() if not k.startswith("_")} | {
            "inflight": self.inflight
        }

    @api.post(
        "/v1/chat/completions", response_model=None, openapi_extra=_documented_body(ChatRequest)
    )
    async def chat(self, request: Request) -> Any:
        return await self._handle(request, "chat")

    @api.post(
        "/v1/completions", response_model=None, openapi_extra=_documented_body(CompletionRequest)
    )
    async def completions(self, request: Request) -> Any:
        return await self._handle(request, "completions")


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
