"""What every job entry point shares: arguments, the run dir, connecting, clear errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RUN_ROOT_ENV = "TTPA_RUN_ROOT"


def submission_id() -> str | None:
    """This job's submission id when running under `ray job submit`."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        meta = json.loads(raw).get("metadata") or {}
    except ValueError:
        return None
    value = meta.get("job_submission_id")
    return str(value) if value else None


def default_run_dir(config: str) -> str:
    """`$TTPA_RUN_ROOT/<config stem>-<submission id or time>` (root: ~/ttpa-ray/runs).

    Never inside the job's working dir: Ray unpacks that into a temporary session
    directory, and outputs written there are gone after the job.
    """
    root = os.environ.get(RUN_ROOT_ENV) or str(Path.home() / "ttpa-ray" / "runs")
    tag = submission_id() or time.strftime("%Y%m%d-%H%M%S")
    return f"{root.rstrip('/')}/{Path(config).stem}-{tag}"


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    from ttpa_ray.cli.parser import Parser

    p = Parser(prog=f"python -m jobs.{prog}", description=description)
    p.add_argument("--config", required=True, help="YAML config (relative to the working dir)")
    p.add_argument(
        "--run-dir",
        help="run dir: a path (shared storage on multi-node clusters) or a pyarrow URI "
        f"(s3://, gs://); default ${RUN_ROOT_ENV}/<config>-<submission id>",
    )
    p.add_argument(
        "--address",
        help="Ray cluster address (default: $RAY_ADDRESS, set by `ray job submit`; "
        "unset: a local Ray on 127.0.0.1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-shard progress bars")
    return p


def connect(address: str | None = None) -> dict[str, float]:
    """Attach to the cluster (or start a local loopback Ray) and return its resources."""
    if address:
        os.environ["RAY_ADDRESS"] = address
    import ray

    from ttpa_ray.ray_utils import init_ray

    init_ray()
    resources = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    where = os.environ.get("RAY_ADDRESS") or "a local Ray (127.0.0.1)"
    print(f"ray: connected to {where}; {len(ray.nodes())} node(s) now; {resources}", flush=True)
    return resources


def load(config: str) -> Any:
    from ttpa_ray.config import load_config

    return load_config(config)


def run_stages(args: argparse.Namespace, until: str, force: str | None = None) -> dict[str, Any]:
    """Bring the run dir up to date through `until` (earlier stages only if not done);
    `force` re-runs that stage and the ones after it."""
    from ttpa_ray.pipeline import run_pipeline

    cfg = load(args.config)
    run_dir = args.run_dir or default_run_dir(args.config)
    print(f"run dir: {run_dir}", flush=True)
    connect(args.address)
    state = run_pipeline(cfg, run_dir, start=force, progress=not args.no_progress, until=until)
    print(f"run dir: {run_dir} (pipeline.json; stage {until}: done)", flush=True)
    return state


def main(fn: Callable[[Sequence[str] | None], int]) -> None:
    """Run `fn(argv)`; user errors exit 2 with one clear line (what `ray job logs` shows),
    as `ttpa-ray`'s do."""
    from ttpa_ray.cli.errors import exit_code

    sys.exit(exit_code(lambda: fn(sys.argv[1:]), "ttpa-ray job error:"))


def stage_job(stage: str, doc: str) -> Callable[[Sequence[str] | None], int]:
    """The entry point of a one-stage job: bring the run dir up to date through `stage`."""

    def run(argv: Sequence[str] | None = None) -> int:
        p = parser(stage, doc)
        p.add_argument("--force", action="store_true", help="re-run even if up to date")
        args = p.parse_args(argv)
        run_stages(args, until=stage, force=stage if args.force else None)
        return 0

    return run
