"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

`OpenAIError` is what every route raises for a client-visible failure (the app's
exception handler turns it into the response); `engine_error` maps what the backend
raised for one request to the status its client gets. Pure Python (the engine errors
it maps live in `engines/base.py`, which imports neither torch nor Ray).
"""

from __future__ import annotations

from typing import Any

from ttpa_ray.engines.base import ContextLengthError, EngineError


class ConstraintError(EngineError):
    """The request's tools or response schema cannot be compiled into a
    constrained-decoding grammar; `param` names the field (`tools`, `response_format`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, available: list[str]) -> OpenAIError:
    return OpenAIError(
        404,
        f"the model {model!r} does not exist; available: {', '.join(available)}",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def engine_error(exc: Exception, prompt_param: str = "messages") -> OpenAIError:
    """What one request's failure becomes for its client: `context_length_exceeded` (400,
    param `prompt_param`: `messages` or `prompt`) for a prompt that does not fit; 400
    naming the field (`tools` or `response_format`) for a schema that cannot be
    constrained; 400 for any other `EngineError` (the request's fault); 500 for anything
    else (ours; logged by the backend, and only this request gets it)."""
    if isinstance(exc, ContextLengthError):
        return bad_request(exc.detail, prompt_param, "context_length_exceeded")
    if isinstance(exc, ConstraintError):
        return bad_request(str(exc), exc.param)
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
