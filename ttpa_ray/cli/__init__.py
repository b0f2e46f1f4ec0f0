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

from ttpa_ray.cli.errors import UsageError, exit_code
from ttpa_ray.cli.parser import build_parser

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    prog = " ".join(w for w in ("ttpa-ray", args.command, getattr(args, "tools_command", "")) if w)
    return exit_code(lambda: args.func(args), f"{prog}: error:")
