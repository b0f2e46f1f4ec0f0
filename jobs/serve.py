"""`python -m jobs.serve --config FILE [--model DIR] [--lora [NAME=]DIR ...] [--run-dir DIR
--which sft|ttpa|dpo_response]`: deploy the OpenAI-compatible app on the cluster's Serve
(host/port from the `serve` section) and return; the app keeps running after the job.
`serve.shutdown()` or `serve shutdown` removes it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jobs._common import connect, load, main, parser


def run(argv: Sequence[str] | None = None) -> int:
    p = parser("serve", __doc__.splitlines()[0])
    p.add_argument("--model", help="model dir (default: serve.model, or RUN_DIR/WHICH/model)")
    p.add_argument("--which", choices=("sft", "ttpa", "dpo_response"), default="ttpa")
    p.add_argument(
        "--lora", action="append", default=[], help="NAME=DIR or DIR adapter (repeatable)"
    )
    p.add_argument("--name", default="ttpa", help="Serve application name")
    args = p.parse_args(argv)
    cfg = load(args.config).serve
    model = args.model or cfg.model
    if not model:
        if not args.run_dir:
            raise ValueError("give --model, serve.model in the config, or --run-dir")
        model = str(Path(args.run_dir) / args.which / "model")
    from ttpa_ray.serve.deploy import lora_adapters

    adapters = lora_adapters(args.lora, cfg.adapters)
    if cfg.backend == "hf" and not Path(model).is_dir():
        raise FileNotFoundError(f"model directory {model} does not exist")
    cfg = cfg.model_copy(update={"model": model, "adapters": adapters})
    connect(args.address)
    from ttpa_ray.serve.deploy import deploy, start_proxy

    start_proxy(cfg.host, cfg.port)
    url = deploy(cfg, name=args.name)
    print(
        f"serving {cfg.resolved_model_id()} at {url} (Serve app {args.name!r}; it outlives "
        "this job)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    main(run)
