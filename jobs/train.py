"""`python -m jobs.train --config FILE [--run-dir DIR] [--stage sft|ttpa|dpo_response]`:
one training stage of the pipeline on Ray Train (SFT, TTPA, or the response-level DPO
baseline); the stages it reads run first if they are not done."""

from __future__ import annotations

from collections.abc import Sequence

from jobs._common import main, parser, run_stages


def run(argv: Sequence[str] | None = None) -> int:
    p = parser("train", __doc__.splitlines()[0])
    p.add_argument("--stage", choices=("sft", "ttpa", "dpo_response"), default="sft")
    p.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = p.parse_args(argv)
    run_stages(args, until=args.stage, force=args.stage if args.force else None)
    return 0


if __name__ == "__main__":
    main(run)
