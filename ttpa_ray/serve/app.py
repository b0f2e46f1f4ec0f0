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
batch-mates are served.
"""

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from ttpa_ray.config import ServeConfig
from ttpa_ray.ray_utils import remote_args
from ttpa_ray.serve.protocol import (
    ChatRequest,
    Generation,
    OpenAIError,
    assistant_message,
    bad_request,
    check_messages,
    check_tools,
    chunk,
    completion_id,
    completion_response,
    constraint_of,
    leaked_tool_call,
    models_response,
    sse,
    usage,
)

TOOL_OPEN = "<tool_call>"

api = FastAPI(
    title="ttpa-ray",
    description="OpenAI-compatible chat completions with tool calls (TTPA-tuned models).",
    version="0.1.0",
)


@api.exception_handler(OpenAIError)
async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


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
    """A backend `EngineError` as the 400 the client gets: `context_length_exceeded` with
    param `messages` for a prompt that does not fit, a plain bad request otherwise."""
    from ttpa_ray.engines.hf_engine import ContextLengthError

    if isinstance(exc, ContextLengthError):
        return bad_request(exc.detail, "messages", "context_length_exceeded")
    return bad_request(str(exc))


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
        from ttpa_ray.serve.backend import HFChatBackend

        self.cfg = ServeConfig.model_validate_json(config_json)
        self.api_key = api_key
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

    def _auth(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if token != self.api_key:
            raise OpenAIError(
                401,
                "missing or wrong API key (send 'Authorization: Bearer <key>')",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )

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
            messages=req.messages,
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
        self.stats.batches += 1
        self.stats.batched_requests += len(reqs)
        return await asyncio.to_thread(self.backend.generate, reqs)

    async def _generate(self, gen_req: Any) -> Generation:
        from ttpa_ray.engines.base import EngineError

        if self.cfg.batching:
            result = await self._generate_batched(gen_req)
        else:
            result = (await asyncio.to_thread(self.backend.generate, [gen_req]))[0]
        if isinstance(result, EngineError):
            raise engine_error(result)
        return result

    async def _prompt(self, gen_req: Any) -> list[int]:
        """The prompt's ids, checked before a stream starts (its 400 can then be a status,
        not an event inside a 200 stream)."""
        from ttpa_ray.engines.base import EngineError

        try:
            ids: list[int] = await asyncio.to_thread(self.backend.prompt_ids, gen_req)
        except EngineError as exc:
            raise engine_error(exc) from exc
        return ids

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
    async def models(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return models_response(self.ids)

    @api.get("/stats")
    async def stats_route(self) -> dict[str, Any]:
        s = self.stats
        return {k: v for k, v in vars(s).items() if not k.startswith("_")} | {
            "inflight": self.inflight
        }

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(self, body: ChatRequest, request: Request) -> Any:
        self._auth(request)
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
            check_messages(body.messages)
            check_tools(body)
            gen_req = self._gen_request(body)
            if body.stream:
                prompt = await self._prompt(gen_req)
                streaming = True
                return StreamingResponse(
                    self._stream(body, gen_req, prompt), media_type="text/event-stream"
                )
            gen = await self._generate(gen_req)
            out = completion_response(body, gen)
            self._count(body, out)
            return out
        finally:
            if not streaming:
                self.inflight -= 1

    def _stream(self, req: ChatRequest, gen_req: Any, prompt: list[int]) -> Iterator[str]:
        """SSE chunks: content as it is decoded; a completion that turns out to call tools
        sends its calls as one `tool_calls` delta at the end (text that may open a
        `<tool_call>` block is held back, never sent as content)."""
        from ttpa_ray.engines.base import EngineError

        cid, created = completion_id(), int(time.time())
        try:
            if gen_req.n > 1:
                # several choices: generate them together, then send each as chunks
                result = self.backend.generate([gen_req])[0]
                if isinstance(result, EngineError):
                    yield sse(engine_error(result).body())
                    return
                for i, text in enumerate(result.texts):
                    yield from self._choice_chunks(
                        req, cid, created, i, text, result.finish_reasons[i], role=True
                    )
                final = result
            else:
                yield sse(
                    chunk(cid, req.model, created, {"role": "assistant", "content": ""}, None)
                )
                text, sent, final_gen = "", 0, None
                try:
                    for piece in self.backend.stream(gen_req, prompt):
                        if isinstance(piece, Generation):
                            final_gen = piece
                            break
                        text += piece
                        safe = self._streamable(text, bool(req.tools))
                        if safe > sent:
                            delta = {"content": text[sent:safe]}
                            yield sse(chunk(cid, req.model, created, delta, None))
                            sent = safe
                except EngineError as exc:
                    yield sse(engine_error(exc).body())
                    return
                assert final_gen is not None
                full = final_gen.texts[0]
                yield from self._choice_chunks(
                    req, cid, created, 0, full, final_gen.finish_reasons[0], sent=sent
                )
                final = final_gen
            if (req.stream_options or {}).get("include_usage"):
                body = chunk(cid, req.model, created, {}, None)
                body["choices"], body["usage"] = [], usage(final)
                yield sse(body)
            yield sse("[DONE]")
        finally:
            self.inflight -= 1

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
