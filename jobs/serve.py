"""`python -m jobs.serve --config FILE [--model DIR] [--lora [NAME=]DIR ...] [--run-dir DIR
--which sft|ttpa|dpo_response]`: deploy the OpenAI-compatible app on the cluster's Serve
(host/port from the `serve` section) and return; the app keeps running after the job.
`serve.shutdown()` or `serve shutdown` removes it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jobs._common import connect, load, main, parser
from ttpa_ray.cli.args import field_help
from ttpa_ray.cli.parser import LORA_HELP


def run(argv: Sequence[str] | None = None) -> int:
    p = parser("serve", __doc__.splitlines()[0])
    p.add_argument("--model", help=field_help("serve.model", "unset: RUN_DIR/WHICH/model"))
    p.add_argument(
        "--which",
        choices=("sft", "ttpa", "dpo_response"),
        default="ttpa",
        help="the run dir's model to serve when no model is given",
    )
    p.add_argument("--lora", action="append", default=[], help=LORA_HELP)
    p.add_argument("--name", default="ttpa", help="Serve application name")
    args = p.parse_args(argv)
    from ttpa_ray.serve.deploy import deploy, serve_settings, start_proxy

    base = load(args.config).serve
    cfg = serve_settings(base, {"model": args.model}, args.lora, args.run_dir, args.which)
    if not cfg.model:
        raise ValueError("give --model, serve.model in the config, or --run-dir")
    # deployed here and now (not written down for elsewhere): a missing dir fails before Ray
    if cfg.backend == "hf" and not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"model directory {cfg.model} does not exist")
    connect(args.address)
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
