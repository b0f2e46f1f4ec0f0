"""What the benchmarks that compare trained models share (`ttpa_gain.py`, `grpo_vs_ttpa.py`):
the longer SFT start and its flags, stage adoption from it, and the eval rows they pool.

Not a benchmark itself: `make bench` skips `benchmarks/_*.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def add_start_args(ap: argparse.ArgumentParser) -> None:
    """The flags of the shared SFT start and TTPA (one set of defaults: the same start)."""
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny-cpu.yaml"))
    ap.add_argument("--keep", help="keep the run dirs under this directory")
    ap.add_argument("--sft-steps", type=int, default=5000, help="the longer SFT start")
    ap.add_argument("--tps-episodes", type=int, default=100, help="episodes TPS samples")
    ap.add_argument("--dpo-steps", type=int, default=40, help="steps of each DPO run")
    ap.add_argument("--eval-limit", type=int, help="held-out turns (default: the config's)")


def base_config(args: argparse.Namespace, dpo_runs: tuple[str, ...]) -> Any:
    """The config of `args.config` with the start's flags applied; `dpo_runs`: the
    `pipeline` DPO sections (`ttpa`, `dpo_response`) that train `--dpo-steps`."""
    from ttpa_ray.config import load_config

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    base = load_config(args.config)
    base.pipeline.sft.update(max_steps=args.sft_steps, checkpoint_every=args.sft_steps)
    base.sample.max_episodes = args.tps_episodes
    if args.eval_limit:
        base.pipeline.eval_limit = args.eval_limit
    for which in dpo_runs:
        getattr(base.pipeline, which).update(
            max_steps=args.dpo_steps, checkpoint_every=args.dpo_steps
        )
    return base


def sft_start(base: Any, root: Path) -> tuple[Path, float]:
    """Ray up (its output to `root/ray.log`), then construct → model → SFT into
    `root/sft-start`; returns that run dir and the seconds it took."""
    from ttpa_ray.pipeline import run_pipeline
    from ttpa_ray.ray_utils import init_ray

    init_ray(log_file=root / "ray.log")  # Ray's own output there, not on the screen
    start = root / "sft-start"
    t0 = time.perf_counter()
    run_pipeline(base, start, progress=False, until="sft")
    return start, time.perf_counter() - t0


def adopting(src: Path, stages: tuple[str, ...], copy: tuple[str, ...] = ()) -> Callable[..., None]:
    """A `run_pipeline` `prepare` that adopts `stages` from run dir `src` (linked; copied
    for those in `copy`, so they can be edited)."""

    def prepare(pipe: Any) -> None:
        for stage in stages:
            if not pipe.done(stage):
                pipe.adopt(stage, src, link=stage not in copy)

    return prepare


def stage_state(run: Path) -> dict[str, dict[str, Any]]:
    """`run`'s pipeline state by stage name (`rows_out`, `seconds`, ...)."""
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    return {s["name"]: s for s in state}


def rows(run: Path, model: str) -> list[dict[str, Any]]:
    """`model`'s held-out eval rows in `run`."""
    import pyarrow.parquet as pq

    return pq.read_table(run / "eval" / model / "heldout" / "results.parquet").to_pylist()


def tagged(rows: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    """`rows` with ids prefixed by `tag` (pooling seeds keeps pairs one-to-one)."""
    return [{**r, "id": f"{tag}:{r['id']}"} for r in rows]


def mean(rows: list[dict[str, Any]], metric: str) -> float:
    """Mean of `metric` over the rows that have it (NaN when none does)."""
    xs = [float(r[metric]) for r in rows if r.get(metric) is not None]
    return sum(xs) / len(xs) if xs else float("nan")
