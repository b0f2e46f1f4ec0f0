"""`python -m jobs.construct --config FILE [--run-dir DIR] [--force]`: the pipeline's
`construct` stage in a run dir (the stages it reads run first if they are not done)."""

from __future__ import annotations

from collections.abc import Sequence

from jobs._common import main, parser, run_stages


def run(argv: Sequence[str] | None = None) -> int:
    p = parser("construct", __doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = p.parse_args(argv)
    run_stages(args, until="construct", force="construct" if args.force else None)
    return 0


if __name__ == "__main__":
    main(run)
