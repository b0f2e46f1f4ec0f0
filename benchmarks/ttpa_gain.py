"""Does TTPA help? One longer SFT start, then SFT vs response-level DPO vs TTPA over seeds.

Run: `make bench` (or `.venv/bin/python benchmarks/ttpa_gain.py [--seeds 3 --sft-steps 5000]`).

1. One SFT start on `configs/tiny-cpu.yaml` (construction, the tiny model, SFT for
   `--sft-steps`, longer than the demo's so that argument values start to be right).
2. For each seed: TPS on the SFT policy (`--tps-episodes` episodes of the train split),
   TTPA (token-level DPO on the TPS pairs) and the response-level DPO baseline (gold vs one
   sampled response per turn) with the same reference, steps and batch — the same number
   of pair visits (`steps × micro_batch_size`; the pair counts differ and are printed) —
   then every model served on Ray Serve and scored over HTTP on the same 400 stratified
   held-out turns. Seeds vary sampling and preference training; SFT is shared.
3. Ablations on seed 0 (one seed each), TTPA trained on the same TPS output but with:
   `branch` pairs only, `n_sample` pairs only, and IPO (length-normalised log-ratios over
   the branch suffix: the objective where the token mask matters; with sigmoid DPO the
   shared prefix cancels and the mask changes nothing, DESIGN §6).

Paired differences (`ttpa_ray.eval.paired_difference`) are over the same examples; the
pooled figures pool the seeds (example ids prefixed by seed; SFT's rows repeat), so they
show sampling noise over examples and seeds but not over SFT starts. Last line:
RESULT esm_sft=<f> esm_dpo_response=<f> esm_ttpa=<f> esm_gain_vs_sft_ci_low=<f>
esm_gain_vs_dpo_ci_low=<f> exact_sft=<f> exact_dpo_response=<f> exact_ttpa=<f>
gain_vs_sft_ci_low=<f> gain_vs_dpo_ci_low=<f>   (unprefixed gains: exact-call accuracy)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    add_start_args,
    adopting,
    base_config,
    mean,
    rows,
    sft_start,
    stage_state,
    tagged,
)

MODELS = ("sft", "dpo_response", "ttpa")
ABLATIONS = {
    # name: (pair sources kept, DPO overrides)
    "branch_only": (("branch",), {}),
    "n_sample_only": (("n_sample",), {}),
    "ipo_token": (None, {"loss_type": "ipo", "token_level": True}),
}


def _filter_pairs(run: Path, sources: tuple[str, ...]) -> int:
    """Keep only pairs of `sources` in an adopted (copied) sample dir; returns the count."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = run / "sample" / "pairs.parquet"
    table = pq.read_table(path)
    keep = table.filter(pc.is_in(table["source"], value_set=pa.array(sources)))
    pq.write_table(keep, path)
    return keep.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    add_start_args(ap)
    ap.add_argument("--no-ablations", action="store_true")
    args = ap.parse_args()
    base = base_config(args, ("ttpa", "dpo_response"))

    from ttpa_ray.eval import paired_difference
    from ttpa_ray.pipeline import Pipeline, run_pipeline

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        start, timings["sft_start"] = sft_start(base, root)
        runs: dict[int, Path] = {}
        pairs: dict[int, dict[str, int]] = {}
        for seed in range(args.seeds):
            cfg = base.model_copy(deep=True)
            cfg.sample.seed = seed
            cfg.train.seed = seed
            runs[seed] = root / f"seed-{seed}"
            t0 = time.perf_counter()
            prepare = adopting(start, ("construct", "model", "sft"))
            run_pipeline(cfg, runs[seed], progress=False, prepare=prepare)
            timings[f"seed{seed}"] = time.perf_counter() - t0
            by = stage_state(runs[seed])
            pairs[seed] = {
                "ttpa": by["ttpa"].get("rows_out", 0),
                "dpo_response": by["dpo_response"].get("rows_out", 0),
            }

        ablations: dict[str, dict[str, Any]] = {}
        if not args.no_ablations and args.seeds:
            for name, (sources, dpo) in ABLATIONS.items():
                cfg = base.model_copy(deep=True)
                cfg.pipeline.ttpa["dpo"] = {**cfg.pipeline.ttpa.get("dpo", {}), **dpo}
                run = root / f"ablation-{name}"
                t0 = time.perf_counter()

                def prepare(pipe: Pipeline, sources: Any = sources) -> None:
                    pipe.eval_models = ("ttpa",)
                    for stage in ("construct", "model", "sft", "sample", "dpo_response"):
                        if not pipe.done(stage):
                            pipe.adopt(stage, runs[0], link=stage != "sample")
                            if stage == "sample" and sources:
                                _filter_pairs(pipe.run, sources)

                run_pipeline(cfg, run, progress=False, prepare=prepare, until="eval")
                timings[name] = time.perf_counter() - t0
                ablations[name] = {
                    "rows": rows(run, "ttpa"),
                    "pairs": stage_state(run)["ttpa"].get("rows_out", 0),
                }

        results = {s: {m: rows(runs[s], m) for m in MODELS} for s in runs}
    report(
        args, results, pairs, ablations, timings, time.perf_counter() - t_start, paired_difference
    )


def report(
    args: Any,
    results: dict[int, dict[str, list[dict[str, Any]]]],
    pairs: dict[int, dict[str, int]],
    ablations: dict[str, dict[str, Any]],
    timings: dict[str, float],
    total_s: float,
    paired_difference: Any,
) -> None:
    from ttpa_ray.config import load_config

    cfg = load_config(args.config)
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs; config {args.config}")
    print(
        f"SFT start: {args.sft_steps} steps (lr {cfg.pipeline.sft.get('lr')}, batch "
        f"{cfg.pipeline.sft.get('micro_batch_size')} packed rows of {cfg.pipeline.sft.get('max_len')}"
        f" tokens) in {timings['sft_start'] / 60:.1f} min; {args.seeds} seeds of TPS "
        f"({args.tps_episodes} episodes) + {args.dpo_steps} DPO steps per model; "
        f"eval: {args.eval_limit or cfg.pipeline.eval_limit} held-out turns; "
        f"total {total_s / 60:.1f} min"
    )
    print("per seed (exact / ESM / name / parse), pairs trained on:")
    for s, by in results.items():
        cells = "  ".join(
            f"{m} {mean(by[m], 'exact'):.3f}/{mean(by[m], 'esm'):.3f}/"
            f"{mean(by[m], 'name_acc'):.3f}/{mean(by[m], 'parsed'):.3f}"
            for m in MODELS
        )
        print(
            f"  seed {s}: {cells}  pairs ttpa={pairs[s]['ttpa']} response={pairs[s]['dpo_response']}"
        )
    pooled = {m: [r for s, by in results.items() for r in tagged(by[m], f"s{s}")] for m in MODELS}
    means = {
        m: {k: mean(pooled[m], k) for k in ("exact", "esm", "name_acc", "parsed")} for m in MODELS
    }
    for m in MODELS:
        print(
            f"{m:13s} exact {means[m]['exact']:.3f}  ESM {means[m]['esm']:.3f}  "
            f"name {means[m]['name_acc']:.3f}  parse {means[m]['parsed']:.3f}  (n={len(pooled[m])})"
        )
    diffs: dict[str, dict[str, Any]] = {}
    for other in ("sft", "dpo_response"):
        for metric in ("exact", "esm"):
            d = paired_difference(pooled["ttpa"], pooled[other], metric)
            diffs[f"{metric}-{other}"] = d
            lo, hi = d["ci"] or (float("nan"), float("nan"))
            print(
                f"ttpa - {other:12s} {metric:5s} {d['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] (n={d['n']})"
            )
    if ablations:
        seed0 = results[0]
        print("ablations (seed 0; TTPA trained on the same TPS output; paired vs SFT and vs TTPA):")
        print(
            f"  {'variant':14s} pairs  exact  ESM    d_exact_vs_sft          d_esm_vs_sft          d_esm_vs_ttpa"
        )
        print(
            f"  {'ttpa (both)':14s} {pairs[0]['ttpa']:5d}  {mean(seed0['ttpa'], 'exact'):.3f}  {mean(seed0['ttpa'], 'esm'):.3f}"
        )
        for name, a in ablations.items():
            got = a["rows"]
            de = paired_difference(got, seed0["sft"], "exact")
            ds = paired_difference(got, seed0["sft"], "esm")
            dt = paired_difference(got, seed0["ttpa"], "esm")

            def cell(d: dict[str, Any]) -> str:
                lo, hi = d["ci"] or (float("nan"), float("nan"))
                return f"{d['diff']:+.3f} [{lo:+.3f},{hi:+.3f}]"

            print(
                f"  {name:14s} {a['pairs']:5d}  {mean(got, 'exact'):.3f}  {mean(got, 'esm'):.3f}  "
                f"{cell(de):22s} {cell(ds):22s} {cell(dt)}"
            )
    ok = diffs["esm-sft"]["ci"][0] > 0 and diffs["esm-dpo_response"]["ci"][0] > 0
    print(
        "goal (TTPA above both baselines in mean ESM, paired 95% lower bound > 0): "
        + ("reached" if ok else "NOT reached")
    )
    print(
        f"RESULT esm_sft={means['sft']['esm']:.4f} esm_dpo_response={means['dpo_response']['esm']:.4f} "
        f"esm_ttpa={means['ttpa']['esm']:.4f} "
        f"esm_gain_vs_sft_ci_low={diffs['esm-sft']['ci'][0]:.4f} "
        f"esm_gain_vs_dpo_ci_low={diffs['esm-dpo_response']['ci'][0]:.4f} "
        f"exact_sft={means['sft']['exact']:.4f} exact_dpo_response={means['dpo_response']['exact']:.4f} "
        f"exact_ttpa={means['ttpa']['exact']:.4f} "
        f"gain_vs_sft_ci_low={diffs['exact-sft']['ci'][0]:.4f} "
        f"gain_vs_dpo_ci_low={diffs['exact-dpo_response']['ci'][0]:.4f}"
    )


if __name__ == "__main__":
    main()
