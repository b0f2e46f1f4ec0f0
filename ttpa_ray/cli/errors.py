"""User errors: what a user can cause is one `error:` line and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import yaml

from ttpa_ray.outdir import OutDirError

log = logging.getLogger("ttpa_ray")


class UsageError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# What a user can cause (bad flags, files, configs, outputs): one `error:` line, exit 2.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    UsageError,
    OutDirError,
    OSError,
    ValueError,
    KeyError,
    RecursionError,
    yaml.YAMLError,
)


def one_line(text: str, limit: int = 1000) -> str:
    """Join a multi-line message: `a:` + `b` → `a: b`, other lines with `; `."""
    out = ""
    for line in (ln.strip() for ln in text.splitlines()):
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out if len(out) <= limit else out[: limit - 1] + "…"


def error_text(e: BaseException) -> str:
    """A user error as one line that names the file or field."""
    from pydantic import ValidationError

    from ttpa_ray.config import describe

    cause = getattr(e, "cause", None)  # a Ray task error wraps the worker's exception
    if type(e).__module__.startswith("ray.") and isinstance(cause, BaseException):
        e = cause
    if isinstance(e, RecursionError):
        return "input nested too deeply (JSON or YAML beyond Python's recursion limit)"
    if isinstance(e, ValidationError):
        return one_line(f"invalid settings: {describe(e)}")
    if isinstance(e, OSError) and e.filename is not None:
        for cls, what in (
            (FileNotFoundError, "not found"),
            (IsADirectoryError, "is a directory, expected a file"),
            (NotADirectoryError, "not a directory"),
            (PermissionError, "permission denied"),
        ):
            if isinstance(e, cls):
                return f"{what}: {e.filename}"
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, FileNotFoundError) and text and " " not in text:
        text = f"not found: {text}"  # a bare path, as pyarrow and Ray raise it
    return one_line(text or type(e).__name__)


def exit_code(run: Callable[[], int | None], prefix: str) -> int:
    """`run()`'s exit code (None: 0), for the CLI and the cluster jobs alike: a user error
    is one `prefix` line on stderr (what `ray job logs` shows too) and exit code 2."""
    try:
        result = run()
    except USER_ERRORS as e:
        log.debug("%s", prefix, exc_info=True)  # -v: the traceback, for a bug report
        print(f"{prefix} {error_text(e)}", file=sys.stderr, flush=True)
        return 2
    return int(result or 0)
