"""The OpenAI protocol, request side: request models, the parameter policy, parsing.

Pure Python (pydantic, no Ray, no torch). Requests are validated here so that client
input can only ever produce a 4xx in OpenAI's error shape (`errors.py`), never a 500.
Content checks (messages, tools, schemas): `checks.py`; response shapes: `responses.py`.

Which request fields do what is decided in one place, `PARAMETERS` below (docs/serve.md,
Serving, lists it): a field is acted on, accepted and ignored (harmless: no
effect on the answer), or refused with a 400 naming it when set to anything but its
neutral value. A field in none of these sets (e.g. a vLLM extension) is ignored; the
app logs its name once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttpa_ray.config import ServeLimits
from ttpa_ray.serve.checks import check_json, check_messages, check_schema_shape, check_tools
from ttpa_ray.serve.errors import bad_request

INT64 = (-(2**63), 2**63 - 1)  # OpenAI's seed range; torch.manual_seed accepts it
MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit (legacy completions: 5; vLLM: 20)
DEFAULT_LIMITS = ServeLimits()


# -- request bodies ---------------------------------------------------------------------------


class _Open(BaseModel):
    # Fields outside the model are sorted by `PARAMETERS` before validation: accept here.
    model_config = ConfigDict(extra="allow")


class _Sampling(_Open):
    """The fields both routes act on."""

    model: str
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text" | "json_object" | "json_schema", ...}'
    )

    @property
    def new_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def stops(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Sampling):
    """`POST /v1/chat/completions` body (the fields we act on; see `PARAMETERS`)."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_k_logprobs(self) -> int | None:
        """None without `logprobs`; else how many alternatives per token (0..20)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    """`POST /v1/completions` body: one text prompt, sent to the model as is (no chat
    template, no special tokens added). A list holding one prompt is accepted; several
    prompts are refused (send one request each: the server batches them anyway)."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# -- the parameter policy ---------------------------------------------------------------------


def _unset(v: Any) -> bool:
    return v is None


def _zero(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)


def _empty(v: Any) -> bool:
    return v is None or v == {} or v == ""


def _false(v: Any) -> bool:
    return v is None or v is False


def _one(v: Any) -> bool:
    return v is None or (v == 1 and not isinstance(v, bool))


def _text_only(v: Any) -> bool:
    return v is None or v == ["text"]


# name → (is this value neutral?, what to do instead). Anything else is a 400 naming it.
_REFUSED_BOTH: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logit_bias": (_empty, "logit_bias is not supported"),
    "presence_penalty": (_zero, "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (_zero, "frequency_penalty is not supported (only 0)"),
}
_IGNORED_CHAT = (
    "user metadata store service_tier safety_identifier prompt_cache_key "
    "prompt_cache_options prompt_cache_retention"
)


class Parameters:
    """One route's request fields: `acted` (the request model's fields), `ignored`
    (accepted, no effect on the answer), `refused` (400 unless neutral)."""

    def __init__(
        self,
        model: type[_Sampling],
        ignored: str,
        refused: dict[str, tuple[Callable[[Any], bool], str]],
    ) -> None:
        self.model = model
        self.acted = frozenset(model.model_fields)
        self.ignored = frozenset(ignored.split())
        self.refused = {**_REFUSED_BOTH, **refused}

    def check(self, body: dict[str, Any]) -> None:
        """A 400 (`code: unsupported_parameter`, `param`: the field) for the first refused
        field set to anything but its neutral value."""
        for name, (neutral, why) in self.refused.items():
            if name in body and not neutral(body[name]):
                raise bad_request(
                    f"{name}: {why}; see docs/serve.md (Serving) for the parameters this "
                    "server supports",
                    name,
                    "unsupported_parameter",
                )

    def unknown(self, body: dict[str, Any]) -> list[str]:
        """Fields in none of the sets (ignored; the caller logs them)."""
        known = self.acted | self.ignored | set(self.refused)
        return sorted(k for k in body if k not in known)


PARAMETERS: dict[str, Parameters] = {
    "chat": Parameters(
        ChatRequest,
        _IGNORED_CHAT,
        {
            "functions": (_unset, "legacy function calling is not supported; send tools"),
            "function_call": (_unset, "legacy function calling is not supported; send tool_choice"),
            "audio": (_unset, "audio output is not supported (a text model)"),
            "modalities": (_text_only, 'only ["text"] is supported'),
            "prediction": (_unset, "predicted outputs are not supported"),
            "web_search_options": (_unset, "web search is not supported"),
            "reasoning_effort": (_unset, "reasoning_effort is not supported"),
            "verbosity": (_unset, "verbosity is not supported"),
            "moderation": (_unset, "moderation is not supported"),
        },
    ),
    "completions": Parameters(
        CompletionRequest,
        "user",
        {
            "echo": (_false, "echo is not supported"),
            "suffix": (_empty, "suffix (insertion) is not supported"),
            "best_of": (_one, "best_of is not supported (only 1; use n)"),
        },
    ),
}


# -- parsing ----------------------------------------------------------------------------------


def _describe(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return f"{param}: {first['msg']}" if param else first["msg"], param


def decode_body(raw: bytes, limits: ServeLimits = DEFAULT_LIMITS) -> Any:
    """The raw request body → JSON, or a 400: invalid UTF-8, invalid JSON, nesting over
    `limits.max_json_depth`. (The body size is checked before it is read.)"""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise bad_request(
            f"the request body is nested too deeply (limit {limits.max_json_depth})"
        ) from None
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None


def parse_body(raw: bytes, limits: ServeLimits = DEFAULT_LIMITS) -> ChatRequest:
    """A chat-completions body → a validated request, or a 400 `OpenAIError` naming the
    field (`decode_body`, then `parse_request`)."""
    return parse_request(decode_body(raw, limits), limits)


def _validated(body: Any, params: Parameters, limits: ServeLimits) -> Any:
    """Shared first steps: a JSON object, nesting and lone surrogates, refused fields,
    then the model. A `null` field means its default (as OpenAI's API reads it)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_json(body, limits.max_json_depth)
    body = {k: v for k, v in body.items() if v is not None}
    params.check(body)
    try:
        req = params.model.model_validate(body)
    except ValidationError as e:
        message, param = _describe(e)
        raise bad_request(message, param) from None
    check_sampling(req, limits)
    return req


def parse_request(body: Any, limits: ServeLimits = DEFAULT_LIMITS) -> ChatRequest:
    """A JSON body → a validated chat request; raises a 400 `OpenAIError` naming the field.

    Every check is on the request alone (no tokenizer, no model): what is left to fail
    later is the prompt's length, which needs the tokenizer."""
    req: ChatRequest = _validated(body, PARAMETERS["chat"], limits)
    if len(req.messages) > limits.max_messages:
        raise bad_request(
            f"{len(req.messages)} messages; at most {limits.max_messages} are accepted",
            "messages",
        )
    if req.tools is not None and len(req.tools) > limits.max_tools:
        raise bad_request(
            f"{len(req.tools)} tools; at most {limits.max_tools} are accepted", "tools"
        )
    check_messages(req.messages)
    check_tools(req.tools, req.tool_choice, limits)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    if response_schema(req, limits) is not None and constraint_of(req):
        raise bad_request(
            "response_format json_object/json_schema cannot be combined with a tool_choice "
            "that forces a tool call",
            "response_format",
        )
    return req


def parse_completion_body(raw: bytes, limits: ServeLimits = DEFAULT_LIMITS) -> CompletionRequest:
    """A legacy completions body → a validated request, or a 400 naming the field."""
    body = decode_body(raw, limits)
    if isinstance(body, dict):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not all(isinstance(p, str) for p in prompt):
            raise bad_request("prompt: token ids are not supported; send the text", "prompt")
        if isinstance(prompt, list) and len(prompt) != 1:
            raise bad_request(
                f"prompt: a list of {len(prompt)} prompts; send one prompt per request "
                "(concurrent requests are batched by the server)",
                "prompt",
            )
    req: CompletionRequest = _validated(body, PARAMETERS["completions"], limits)
    if not req.text:
        raise bad_request("prompt must not be empty", "prompt")
    response_schema(req, limits)
    return req


def check_sampling(req: _Sampling, limits: ServeLimits) -> None:
    """Counts and sizes every route shares (`serve.limits`), before any work."""
    if req.n > limits.max_n:
        raise bad_request(f"n is {req.n}; at most {limits.max_n} choices are accepted", "n")
    new = req.new_tokens
    if new is not None and new > limits.max_tokens:
        field = (
            "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        )
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
    if req.stream and _wants_logprobs(req):
        raise bad_request("logprobs with stream is not supported; send stream: false", "logprobs")


def _wants_logprobs(req: _Sampling) -> bool:
    value = getattr(req, "logprobs", None)
    return value is not None and value is not False


# -- response_format --------------------------------------------------------------------------

# What `json_object` admits: an object whose values are scalars, or lists/objects of
# scalars. Bounded like tool arguments (`schema_bounds`), so even an untrained model ends;
# deeper shapes: send a `json_schema`.
_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            _SCALAR,
            {"type": "array", "items": _SCALAR},
            {"type": "object", "additionalProperties": _SCALAR},
        ]
    },
}


def response_schema(req: _Sampling, limits: ServeLimits = DEFAULT_LIMITS) -> dict[str, Any] | None:
    """The JSON Schema `response_format` asks decoding to follow (None: free text), or a
    400 naming `response_format`. `json_object` → `JSON_OBJECT_SCHEMA`; `json_schema` →
    its `schema` (always enforced, whatever `strict` says)."""
    rf = req.response_format
    if rf is None:
        return None
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind != "json_schema":
        raise bad_request(
            f"response_format.type must be text, json_object or json_schema, got {kind!r}",
            "response_format",
        )
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad_request(
            'response_format json_schema needs "json_schema": {"name": ..., "schema": {...}}',
            "response_format",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise bad_request(
            "response_format.json_schema.schema must be a JSON Schema object", "response_format"
        )
    if not isinstance(spec.get("strict", False), bool):
        raise bad_request("response_format.json_schema.strict must be a boolean", "response_format")
    check_schema_shape(schema, limits.max_schema_depth, "response_format")
    return schema


def constraint_of(req: ChatRequest) -> str | dict[str, Any] | None:
    """The tool-call constraint: `"required"`, a named-function choice, or None (free)."""
    if req.tools and (req.tool_choice == "required" or isinstance(req.tool_choice, dict)):
        return req.tool_choice
    return None
