"""`python -m jobs.pipeline --config FILE [--run-dir DIR] [--from STAGE] [--until STAGE]`:
the whole TTPA pipeline on the cluster (resumable: a re-submitted job skips done stages)."""

from __future__ import annotations

from collections.abc import Sequence

from jobs._common import main, parser, run_stages


def run(argv: Sequence[str] | None = None) -> int:
    from ttpa_ray.pipeline import STAGES

    p = parser("pipeline", __doc__.splitlines()[0])
    p.add_argument("--from", dest="start", choices=STAGES, help="re-run from this stage on")
    p.add_argument("--until", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    args = p.parse_args(argv)
    run_stages(args, until=args.until, force=args.start)
    return 0


if __name__ == "__main__":
    main(run)
