"""`python -m jobs.eval --config FILE [--run-dir DIR]`: the pipeline's eval + report stages
(each model served on Ray Serve and queried over HTTP); or, with `--endpoint URL --model
NAME --suite SUITE --out DIR`, evaluate any running OpenAI-compatible endpoint."""

from __future__ import annotations

from collections.abc import Sequence

from jobs._common import connect, load, main, parser, run_stages


def run(argv: Sequence[str] | None = None) -> int:
    p = parser("eval", __doc__.splitlines()[0])
    p.add_argument("--endpoint", help="evaluate this endpoint (http://HOST:PORT/v1) instead")
    p.add_argument("--model", help="with --endpoint: the served model id")
    p.add_argument("--suite", default="heldout", help="heldout:DIR | bfcl:CATS | toolbench:FILE")
    p.add_argument("--out", help="with --endpoint: the results dir")
    p.add_argument("--limit", type=int, help="with --endpoint: examples per suite")
    p.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = p.parse_args(argv)
    if not args.endpoint:
        run_stages(args, until="report", force="eval" if args.force else None)
        return 0
    if not (args.model and args.out):
        raise ValueError("--endpoint needs --model and --out")
    from ttpa_ray.eval import run_eval

    connect(args.address)
    cfg = load(args.config)
    m = run_eval(
        args.endpoint,
        args.model,
        args.suite,
        args.out,
        limit=args.limit or cfg.pipeline.eval_limit,
        max_tokens=cfg.pipeline.eval_max_tokens,
        distractors=cfg.sample.distractors,
        progress=not args.no_progress,
    )
    print(f"{m['suite']} {m['model']}: n={m['n']} esm={m['esm']} exact={m['exact']} → {args.out}")
    return 0


if __name__ == "__main__":
    main(run)
