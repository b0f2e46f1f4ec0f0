"""Does TTPA help? The tiny pipeline over several seeds: SFT vs response-level DPO vs TTPA.

Run: `make bench` (or `.venv/bin/python benchmarks/ttpa_gain.py [--seeds 3 --config FILE]`).

Each seed runs the whole pipeline (`configs/tiny-cpu.yaml` by default: construction,
the tiny model, SFT, TPS, TTPA and the response-level DPO baseline on the same pairs
budget, every model served on Ray Serve and evaluated over HTTP on the held-out split),
with the seed set for construction, the tiny model, training and sampling. It prints
held-out ESM and exact-call accuracy per model and seed, then mean ± std over seeds.
Last line: RESULT esm_ttpa=<float> esm_sft=<float> esm_dpo_response=<float> esm_std=<float>
(`esm_std`: the largest of the three models' standard deviations over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("sft", "dpo_response", "ttpa")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny-cpu.yaml"))
    ap.add_argument("--keep", help="keep the run dirs under this directory")
    ap.add_argument("--sft-steps", type=int, help="override pipeline.sft.max_steps")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from ttpa_ray.config import load_config
    from ttpa_ray.pipeline import run_pipeline

    base = load_config(args.config)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODELS}
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for seed in range(args.seeds):
            cfg = base.model_copy(deep=True)
            cfg.construct.seed = seed * 100_000
            cfg.train.seed = seed
            cfg.sample.seed = seed
            cfg.pipeline.tiny.seed = seed
            if args.sft_steps:
                cfg.pipeline.sft.update(max_steps=args.sft_steps, checkpoint_every=args.sft_steps)
            t0 = time.perf_counter()
            run_pipeline(cfg, root / f"seed-{seed}", progress=False)
            seconds.append(time.perf_counter() - t0)
            summary = json.loads((root / f"seed-{seed}" / "eval" / "summary.json").read_text())
            for m in MODELS:
                results[m].append(summary[m])

    sft = f", SFT steps {args.sft_steps}" if args.sft_steps else ""
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs; config {args.config}{sft}")
    print(f"{args.seeds} seeds, {statistics.mean(seconds):.0f}s per pipeline run")
    print(f"{'model':14s} " + " ".join(f"seed{s} esm/exact" for s in range(args.seeds)))
    for m in MODELS:
        cells = " ".join(f"{r['esm']:.3f}/{r['exact']:.3f}   " for r in results[m])
        print(f"{m:14s} {cells}")
    means, stds = {}, {}
    for m in MODELS:
        esm = [r["esm"] for r in results[m]]
        exact = [r["exact"] for r in results[m]]
        means[m] = statistics.mean(esm)
        stds[m] = statistics.stdev(esm) if len(esm) > 1 else 0.0
        ex_std = statistics.stdev(exact) if len(exact) > 1 else 0.0
        print(
            f"{m:14s} ESM {means[m]:.3f} ± {stds[m]:.3f}   exact "
            f"{statistics.mean(exact):.3f} ± {ex_std:.3f}"
        )
    spread = max(stds.values())
    gain = means["ttpa"] - max(means["sft"], means["dpo_response"])
    verdict = "wins" if gain > spread else "does not win"
    print(f"TTPA {verdict}: {gain:+.3f} ESM over the better baseline (spread {spread:.3f})")
    print(
        f"RESULT esm_ttpa={means['ttpa']:.4f} esm_sft={means['sft']:.4f} "
        f"esm_dpo_response={means['dpo_response']:.4f} esm_std={spread:.4f}"
    )


if __name__ == "__main__":
    main()
