"""`ttpa-ray` command line. Each subcommand is a thin shell over a stage's Python API.

Exit codes: 0 success, 1 the input had invalid items (e.g. `tools validate`), 2 the
command could not run (bad arguments, missing or unreadable input, an output path holding
data ttpa-ray did not write), reported as one `error:` line (`-v` adds the traceback).

Outputs: a directory ttpa-ray creates gets a `.ttpa-ray-out` marker, and only such a
directory is resumed, or replaced (`score`), without `--overwrite`; nothing ttpa-ray did
not write is ever deleted (see `ttpa_ray/outdir.py`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ttpa_ray.cli.errors import USER_ERRORS, UsageError, error_text
from ttpa_ray.cli.parser import build_parser

__all__ = ["UsageError", "build_parser", "main"]

log = logging.getLogger("ttpa_ray")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    prog = " ".join(w for w in ("ttpa-ray", args.command, getattr(args, "tools_command", "")) if w)
    try:
        result: Any = args.func(args)
    except USER_ERRORS as e:
        log.debug("%s failed", prog, exc_info=True)  # -v: the traceback, for a bug report
        print(f"{prog}: error: {error_text(e)}", file=sys.stderr)
        return 2
    return int(result or 0)
