"""Reversed construction throughput: the schema teacher on Ray Data with 1 vs 2 workers.

Run: `make bench` (or `.venv/bin/python benchmarks/construct_bench.py [--episodes N]`).

Same config and seeds in both runs (built-in catalog, schema teacher, one shard so no
resume effects); each run is timed end to end, after one warm-up run that starts the
worker processes. Also prints where the time goes, per step (summed task seconds).
Last line: RESULT episodes_per_s=<float> ray_2v1_ratio=<float>
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

from ttpa_ray.config import ConstructConfig
from ttpa_ray.construct.stage import run_construct
from ttpa_ray.ray_utils import init_ray


def timed(cfg: ConstructConfig) -> tuple[float, dict]:
    out = tempfile.mkdtemp(prefix="construct_bench_")
    t0 = time.perf_counter()
    manifest = run_construct(cfg, out, progress=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds, manifest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=4000)
    args = ap.parse_args()
    base = {"n_episodes": args.episodes, "shard_size": args.episodes, "num_cpus": 0.5}
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(f"episodes: {args.episodes}, schema teacher, built-in catalog, one shard")
    init_ray(num_cpus=os.cpu_count() or 2)
    timed(ConstructConfig.model_validate({**base, "n_episodes": 20, "shard_size": 20}))  # warm-up
    results = {}
    for workers in (1, 2):
        seconds, manifest = timed(ConstructConfig.model_validate({**base, "workers": workers}))
        results[workers] = args.episodes / seconds
        steps = {s["stage"]: s["seconds"] for s in manifest["stages"] if "." in s["stage"]}
        total = sum(steps.values()) or 1.0
        split = ", ".join(f"{k.split('.')[1]} {v / total:.0%}" for k, v in steps.items() if v)
        kept = manifest["stages"][0]["rows_out"]
        print(
            f"{workers} worker(s): {results[workers]:.1f} episodes/s ({kept} kept); step time: {split}"
        )
    print(f"RESULT episodes_per_s={results[1]:.2f} ray_2v1_ratio={results[2] / results[1]:.3f}")


if __name__ == "__main__":
    main()
