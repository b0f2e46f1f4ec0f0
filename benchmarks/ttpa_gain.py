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
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("sft", "dpo_response", "ttpa")
ABLATIONS = {
    # name: (pair sources kept, DPO overrides)
    "branch_only": (("branch",), {}),
    "n_sample_only": (("n_sample",), {}),
    "ipo_token": (None, {"loss_type": "ipo", "token_level": True}),
}


def _rows(run: Path, model: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(run / "eval" / model / "heldout" / "results.parquet").to_pylist()


def _tagged(rows: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    return [{**r, "id": f"{tag}:{r['id']}"} for r in rows]


def _mean(rows: list[dict[str, Any]], metric: str) -> float:
    xs = [float(r[metric]) for r in rows if r.get(metric) is not None]
    return sum(xs) / len(xs) if xs else float("nan")


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
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny-cpu.yaml"))
    ap.add_argument("--keep", help="keep the run dirs under this directory")
    ap.add_argument("--sft-steps", type=int, default=5000, help="the longer SFT start")
    ap.add_argument("--tps-episodes", type=int, default=100, help="episodes TPS samples")
    ap.add_argument("--dpo-steps", type=int, default=40, help="steps of each DPO run")
    ap.add_argument("--eval-limit", type=int, help="held-out turns (default: the config's)")
    ap.add_argument("--no-ablations", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from ttpa_ray.config import load_config
    from ttpa_ray.eval import paired_difference
    from ttpa_ray.pipeline import Pipeline, run_pipeline

    base = load_config(args.config)
    base.pipeline.sft.update(max_steps=args.sft_steps, checkpoint_every=args.sft_steps)
    base.sample.max_episodes = args.tps_episodes
    if args.eval_limit:
        base.pipeline.eval_limit = args.eval_limit
    for which in ("ttpa", "dpo_response"):
        getattr(base.pipeline, which).update(
            max_steps=args.dpo_steps, checkpoint_every=args.dpo_steps
        )
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        from ttpa_ray.ray_utils import init_ray

        init_ray(log_file=root / "ray.log")  # Ray's own output there, not on the screen
        start = root / "sft-start"
        t0 = time.perf_counter()
        run_pipeline(base, start, progress=False, until="sft")
        timings["sft_start"] = time.perf_counter() - t0

        def adopting(src: Path, stages: tuple[str, ...], copy: tuple[str, ...] = ()) -> Any:
            def prepare(pipe: Pipeline) -> None:
                for stage in stages:
                    if not pipe.done(stage):
                        pipe.adopt(stage, src, link=stage not in copy)

            return prepare

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
            state = json.loads((runs[seed] / "pipeline.json").read_text())["stages"]
            by = {s["name"]: s for s in state}
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
                rows = _rows(run, "ttpa")
                state = json.loads((run / "pipeline.json").read_text())["stages"]
                ablations[name] = {
                    "rows": rows,
                    "pairs": next(s for s in state if s["name"] == "ttpa").get("rows_out", 0),
                }

        results = {s: {m: _rows(runs[s], m) for m in MODELS} for s in runs}
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
            f"{m} {_mean(by[m], 'exact'):.3f}/{_mean(by[m], 'esm'):.3f}/"
            f"{_mean(by[m], 'name_acc'):.3f}/{_mean(by[m], 'parsed'):.3f}"
            for m in MODELS
        )
        print(
            f"  seed {s}: {cells}  pairs ttpa={pairs[s]['ttpa']} response={pairs[s]['dpo_response']}"
        )
    pooled = {m: [r for s, by in results.items() for r in _tagged(by[m], f"s{s}")] for m in MODELS}
    means = {
        m: {k: _mean(pooled[m], k) for k in ("exact", "esm", "name_acc", "parsed")} for m in MODELS
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
            f"  {'ttpa (both)':14s} {pairs[0]['ttpa']:5d}  {_mean(seed0['ttpa'], 'exact'):.3f}  {_mean(seed0['ttpa'], 'esm'):.3f}"
        )
        for name, a in ablations.items():
            rows = a["rows"]
            de = paired_difference(rows, seed0["sft"], "exact")
            ds = paired_difference(rows, seed0["sft"], "esm")
            dt = paired_difference(rows, seed0["ttpa"], "esm")

            def cell(d: dict[str, Any]) -> str:
                lo, hi = d["ci"] or (float("nan"), float("nan"))
                return f"{d['diff']:+.3f} [{lo:+.3f},{hi:+.3f}]"

            print(
                f"  {name:14s} {a['pairs']:5d}  {_mean(rows, 'exact'):.3f}  {_mean(rows, 'esm'):.3f}  "
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
