"""JSON out of model text: extract, validate, and one repair round.

LLM teachers are asked for JSON but wrap it in prose or ```json fences, or get it wrong.
`extract_json` finds the first JSON object/array in a text and never raises;
`generate_json` generates, extracts, validates and, on failure, asks the model once to fix
its own output. Pure Python (no torch, no Ray).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ttpa_ray.engines.base import ChatRequest, EngineError, GenerationParams, TextEngine
from ttpa_ray.schema.tool_call_text import STRICT_JSON_DECODER

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n?(.*?)```", re.DOTALL)
# Bounds the scan of a long non-JSON text (each '{'/'[' is one decode attempt).
_MAX_CANDIDATES = 256


# Strict JSON: NaN/Infinity (which `json` accepts by default) are rejected.
_DECODER = STRICT_JSON_DECODER


def _first_json(text: str) -> tuple[Any | None, str | None]:
    """The first decodable object/array starting at a '{' or '[' of `text`."""
    first_error: str | None = None
    tried = 0
    for match in re.finditer(r"[\[{]", text):
        if tried >= _MAX_CANDIDATES:
            break
        tried += 1
        try:
            value, _ = _DECODER.raw_decode(text, match.start())
        except (ValueError, RecursionError) as exc:
            if first_error is None:
                first_error = f"invalid JSON at char {match.start()}: {exc}"
            continue
        return value, None
    return None, first_error or "no JSON object or array found"


def extract_json(text: Any) -> tuple[Any | None, str | None]:
    """The first JSON object or array in `text`, as `(value, None)`, or `(None, reason)`.

    Accepts bare JSON, JSON inside ```json (or plain ```) fences (fenced blocks are tried
    first), and JSON surrounded by prose. Scalars (`"a"`, `3`) do not count. NaN and
    Infinity are rejected. Never raises: a non-string input gives a reason too.
    """
    try:
        if not isinstance(text, str):
            return None, f"output is not a string: {type(text).__name__}"
        if not text.strip():
            return None, "empty output"
        first_error: str | None = None
        for fence in _FENCE.finditer(text):
            value, error = _first_json(fence.group(2))
            if error is None:
                return value, None
            first_error = first_error or f"in code fence: {error}"
        value, error = _first_json(text)
        if error is None:
            return value, None
        return None, first_error or error
    except Exception as exc:  # never raise: callers count reasons, not tracebacks
        return None, f"internal error: {type(exc).__name__}: {exc}"


def check_reply(text: str, validate: Callable[[Any], list[str]]) -> tuple[Any | None, list[str]]:
    """The JSON in `text` if `validate` accepts it: `(value, [])`, else `(None, errors)`."""
    value, reason = extract_json(text)
    if reason is not None:
        return None, [reason]
    try:
        errors = [str(e) for e in validate(value)]
    except Exception as exc:  # a buggy validator is a failed attempt, not a crash
        errors = [f"validator raised {type(exc).__name__}: {exc}"]
    return (value, []) if not errors else (None, errors)


REPAIR_PROMPT = (
    "Your previous reply could not be used:\n{errors}\n"
    "Reply again with the corrected JSON only: no prose, no code fences."
)


def repair_request(request: ChatRequest, bad_output: str, errors: list[str]) -> ChatRequest:
    """`request` + the bad reply (assistant) + a user message listing `errors`."""
    messages = [
        *request.messages,
        {"role": "assistant", "content": bad_output},
        {
            "role": "user",
            "content": REPAIR_PROMPT.format(errors="\n".join(f"- {e}" for e in errors)),
        },
    ]
    return ChatRequest(
        messages=messages, tools=request.tools, request_id=f"{request.request_id}#repair"
    )


@dataclass
class JSONResult:
    """The outcome of one request of `generate_json_batch`.

    `value` is set when a completion passed validation. Otherwise `reasons` lists why each
    attempt failed (`attempt k: ...`), or `engine_error` says the engine could not serve
    the request at all. `attempts`: generations made for this request (1 or 2).
    """

    value: Any = None
    reasons: list[str] = field(default_factory=list)
    attempts: int = 0
    engine_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.reasons and self.engine_error is None


def _generate_isolated(
    engine: TextEngine, requests: list[ChatRequest], params: GenerationParams
) -> list[list[str] | EngineError]:
    """`engine.generate`, and when the batch fails, each request alone: one bad request
    (say, a prompt too long) must not fail the others of its batch."""
    try:
        return list(engine.generate(requests, params))
    except EngineError as exc:
        if len(requests) == 1:
            return [exc]
    out: list[list[str] | EngineError] = []
    for request in requests:
        try:
            out.append(engine.generate([request], params)[0])
        except EngineError as exc:
            out.append(exc)
    return out


def generate_json_batch(
    engine: TextEngine,
    requests: list[ChatRequest],
    params: GenerationParams,
    validators: list[Callable[[Any], list[str]]],
    repair: bool = True,
) -> list[JSONResult]:
    """`generate_json` for many requests at once: one batched generation per attempt.

    `validators[i]` checks request i. Requests whose first attempt fails are repaired
    together in one more batched call (`n=1`). Engine errors are caught per request
    (`JSONResult.engine_error`), never raised. Results are in request order.
    """
    if len(validators) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(validators)} validators")
    results = [JSONResult() for _ in requests]
    pending = list(range(len(requests)))
    current = {i: requests[i] for i in pending}
    max_attempts = 2 if repair else 1
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        outputs = _generate_isolated(engine, [current[i] for i in pending], params)
        retry: list[int] = []
        for i, texts in zip(pending, outputs, strict=True):
            res = results[i]
            res.attempts = attempt
            if isinstance(texts, EngineError):
                res.engine_error = str(texts)
                continue
            first_errors: list[str] | None = None
            for text in texts:
                value, errors = check_reply(text, validators[i])
                if not errors:
                    res.value, res.reasons = value, []
                    break
                if first_errors is None:
                    first_errors = errors
            else:
                first_errors = first_errors or ["engine returned no completion"]
                res.reasons += [f"attempt {attempt}: {e}" for e in first_errors]
                if attempt < max_attempts:
                    current[i] = repair_request(
                        requests[i], texts[0] if texts else "", first_errors
                    )
                    retry.append(i)
        pending = retry
        # A repair should be the model's best answer: one completion is enough.
        params = replace(params, n=1)
    return results


def generate_json(
    engine: TextEngine,
    request: ChatRequest,
    params: GenerationParams,
    validate: Callable[[Any], list[str]],
    repair: bool = True,
) -> tuple[Any | None, list[str], int]:
    """Generate JSON that `validate` accepts: `(value, [], attempts)` or `(None, reasons, attempts)`.

    `validate(value)` returns a list of error strings (empty: valid); if it raises, that
    counts as an error. With `params.n > 1` the first valid completion wins. On failure and
    with `repair`, one more generation is made with the first completion and its errors
    appended to the conversation. Reasons are prefixed `attempt k:`. Engine errors
    (`EngineError`) propagate.
    """
    res = generate_json_batch(engine, [request], params, [validate], repair)[0]
    if res.engine_error is not None:
        raise EngineError(res.engine_error)
    if res.ok:
        return res.value, [], res.attempts
    return None, res.reasons, 2 if repair else 1
