"""GRPO with sequence vs span credit vs TTPA, from one SFT start, at an equal token budget.

Run: `.venv/bin/python benchmarks/grpo_vs_ttpa.py [--seeds 2 --sft-steps 5000]`, or
`--quick` (tiny settings, ~5 minutes: checks the wiring, its numbers mean nothing).

1. The SFT start of `ttpa_gain.py` (the same flags and defaults, `_common.py`).
2. Calibration: `--calib-steps` GRPO steps (seed 0, span credit) from the start measure
   the policy forward tokens of one GRPO step.
3. Per seed: TPS + TTPA as in `ttpa_gain.py` (no response-level DPO). TTPA's budget is
   TPS's forward tokens (sample manifest `forward_tokens`) + its DPO training tokens
   (`tokens` in metrics.jsonl). Both GRPO arms (`train.grpo.advantage` sequence and span,
   the pipeline's `grpo` stage) then run round(budget / calibrated tokens per step)
   steps from SFT; their spend is `rollout_tokens` + `tokens` of grpo/metrics.jsonl, and
   the printed ratio to TTPA's budget says how close the match came. Reference-model
   forwards count on neither side. Every model is served on Ray Serve and scored over
   HTTP on the same stratified held-out turns. SFT is scored once (the eval decodes
   greedily, so every seed would get the same rows); its rows repeat per seed.

Paired differences (`ttpa_ray.eval.paired_difference`) pool the seeds (ids prefixed by
seed), as in `ttpa_gain.py`. reward_gain: GRPO-span's mean training reward over the last
20% of its steps minus the first 20%, averaged over seeds; rollout_tokens_per_s: all GRPO
rollout tokens ÷ rollout seconds. Last line:
RESULT esm_sft=<f> esm_ttpa=<f> esm_grpo_seq=<f> esm_grpo_span=<f> exact_sft=<f>
exact_ttpa=<f> exact_grpo_seq=<f> exact_grpo_span=<f> reward_gain=<f> rollout_tokens_per_s=<f>
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

MODELS = ("sft", "ttpa", "grpo_seq", "grpo_span")
ARMS = {"grpo_seq": "sequence", "grpo_span": "span"}  # model name: train.grpo.advantage
DIFFS = (
    ("grpo_span", "grpo_seq"),
    ("grpo_span", "sft"),
    ("grpo_span", "ttpa"),
    ("grpo_seq", "sft"),
)
QUICK = {
    "seeds": 1,
    "sft_steps": 150,
    "tps_episodes": 8,
    "dpo_steps": 4,
    "eval_limit": 40,
    "calib_steps": 2,
}


def metrics(out: Path) -> list[dict[str, Any]]:
    """A training run's metrics.jsonl, one row per step (a resumed step: its last row)."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def grpo_tokens(out: Path) -> int:
    """Policy forward tokens of a GRPO run: rollouts + training passes."""
    return int(sum(m["rollout_tokens"] + m["tokens"] for m in metrics(out)))


def ttpa_tokens(run: Path) -> dict[str, int]:
    """TTPA's policy forward tokens: TPS sampling and DPO training."""
    tps = int(json.loads((run / "sample" / "manifest.json").read_text())["forward_tokens"])
    dpo = int(sum(m["tokens"] for m in metrics(run / "ttpa")))
    return {"tps": tps, "dpo": dpo, "total": tps + dpo}


def reward_gain(steps: list[dict[str, Any]]) -> float:
    """Mean reward over the last 20% of steps minus the first 20% (at least one step each)."""
    k = max(1, round(0.2 * len(steps)))
    first, last = steps[:k], steps[-k:]
    return sum(m["reward"] for m in last) / k - sum(m["reward"] for m in first) / k


def ran_seconds(run: Path) -> dict[str, float]:
    """Seconds per stage that `run` ran itself (adopted stages left out)."""
    return {
        name: float(s.get("seconds", 0.0))
        for name, s in stage_state(run).items()
        if "adopted_from" not in s
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    add_start_args(ap)
    ap.add_argument(
        "--calib-steps", type=int, default=3, help="GRPO steps that measure tokens per step"
    )
    ap.add_argument("--quick", action="store_true", help="tiny settings: a wiring check")
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    base = base_config(args, ("ttpa",))
    base.pipeline.grpo_enabled = True

    from ttpa_ray.pipeline import Pipeline, run_pipeline
    from ttpa_ray.train.trainer import run_training

    def without_baseline(pipe: Pipeline, models: tuple[str, ...]) -> None:
        # the response-level DPO baseline is not an arm here: out of the graph, not run
        pipe.stages = tuple(s for s in pipe.stages if s != "dpo_response")
        pipe.eval_models = models

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        start, timings["sft_start"] = sft_start(base, root)

        calib = base.model_copy(deep=True)
        grpo = {**calib.pipeline.grpo.get("grpo", {}), "advantage": "span"}
        calib.pipeline.grpo.update(
            max_steps=args.calib_steps, checkpoint_every=args.calib_steps, grpo=grpo
        )
        t0 = time.perf_counter()
        out = root / "calibration"
        run_training(
            "grpo", calib.train_for("grpo"), start / "construct", start / "sft" / "model", out
        )
        timings["calibration"] = time.perf_counter() - t0
        per_step = grpo_tokens(out) / len(metrics(out))

        runs: dict[tuple[int, str], Path] = {}
        budget: dict[int, dict[str, Any]] = {}
        adopt = adopting(start, ("construct", "model", "sft"))  # every run: the one start
        for seed in range(args.seeds):
            cfg = base.model_copy(deep=True)
            cfg.sample.seed = seed
            cfg.train.seed = seed
            # TTPA and GRPO-span share the seed's run dir (one eval stage scores sft, ttpa
            # and grpo); GRPO-sequence runs in its own, with GRPO and its eval only
            run = runs[seed, "ttpa"] = runs[seed, "grpo_span"] = root / f"seed-{seed}"
            runs[seed, "grpo_seq"] = root / f"seed-{seed}-grpo_seq"
            models = ("sft", "ttpa", "grpo") if seed == 0 else ("ttpa", "grpo")

            def prepare(pipe: Pipeline, models: tuple[str, ...] = models) -> None:
                without_baseline(pipe, models)
                adopt(pipe)

            def grpo_only(pipe: Pipeline) -> None:
                without_baseline(pipe, ("grpo",))
                pipe.stages = tuple(s for s in pipe.stages if s not in ("sample", "ttpa"))
                adopt(pipe)

            t0 = time.perf_counter()
            run_pipeline(cfg, run, progress=False, prepare=prepare, until="ttpa")
            timings[f"seed{seed} tps+ttpa"] = time.perf_counter() - t0
            spent = ttpa_tokens(run)
            steps = max(1, round(spent["total"] / per_step))
            budget[seed] = {"ttpa": spent, "grpo_steps": steps}
            for model, advantage in ARMS.items():
                arm = cfg.model_copy(deep=True)
                grpo = {**arm.pipeline.grpo.get("grpo", {}), "advantage": advantage}
                arm.pipeline.grpo.update(max_steps=steps, checkpoint_every=steps, grpo=grpo)
                t0 = time.perf_counter()
                run_pipeline(
                    arm,
                    runs[seed, model],
                    progress=False,
                    prepare=prepare if model == "grpo_span" else grpo_only,
                    until="eval",
                )
                timings[f"seed{seed} {model}+eval"] = time.perf_counter() - t0
                budget[seed][model] = grpo_tokens(runs[seed, model] / "grpo")
                budget[seed][f"{model}_metrics"] = metrics(runs[seed, model] / "grpo")
            budget[seed]["seconds"] = {
                runs[seed, m].name: ran_seconds(runs[seed, m]) for m in ("ttpa", "grpo_seq")
            }

        sft_rows = rows(runs[0, "ttpa"], "sft")
        results = {
            seed: {
                "sft": sft_rows,
                "ttpa": rows(runs[seed, "ttpa"], "ttpa"),
                **{m: rows(runs[seed, m], "grpo") for m in ARMS},
            }
            for seed in range(args.seeds)
        }
    report(args, results, budget, per_step, timings, time.perf_counter() - t_start)


def report(
    args: Any,
    results: dict[int, dict[str, list[dict[str, Any]]]],
    budget: dict[int, dict[str, Any]],
    per_step: float,
    timings: dict[str, float],
    total_s: float,
) -> None:
    from ttpa_ray.config import load_config
    from ttpa_ray.eval import bootstrap_ci, paired_difference

    cfg = load_config(args.config)
    g = cfg.train_for("grpo").grpo
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs; config {args.config}")
    print(
        f"SFT start: {args.sft_steps} steps; {args.seeds} seeds of TPS ({args.tps_episodes} "
        f"episodes) + {args.dpo_steps} TTPA steps; GRPO: {g.prompts_per_step} prompts × "
        f"{g.group_size} completions (≤ {g.max_tokens} tokens) per step, reward {g.reward}, "
        f"calibrated at {per_step:,.0f} policy forward tokens per step ({args.calib_steps} "
        f"steps); eval: {args.eval_limit or cfg.pipeline.eval_limit} held-out turns"
        + (" [--quick: a wiring check, not a result]" if args.quick else "")
    )
    print("time per part (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items()))
    for seed, b in budget.items():
        stages = "; ".join(
            f"{run}: " + ", ".join(f"{s} {sec:.0f}s" for s, sec in b["seconds"][run].items())
            for run in b["seconds"]
        )
        print(f"  seed {seed} stage seconds: {stages}")
    print(f"total {total_s / 60:.1f} min")

    print("policy forward tokens per arm (the equal budget):")
    for seed, b in budget.items():
        t = b["ttpa"]
        arms = "  ".join(f"{m} {b[m]:,} ({b[m] / t['total']:.2f}× TTPA)" for m in ARMS)
        print(
            f"  seed {seed}: ttpa {t['total']:,} (TPS {t['tps']:,} + DPO {t['dpo']:,})  "
            f"{arms}  GRPO steps {b['grpo_steps']}"
        )

    pooled = {m: [r for s, by in results.items() for r in tagged(by[m], f"s{s}")] for m in MODELS}
    print(
        "model        ESM [95% CI]              exact [95% CI]            parse  tokens (mean/seed)"
    )
    for m in MODELS:
        cells = []
        for metric in ("esm", "exact"):
            lo, hi = bootstrap_ci([r.get(metric) for r in pooled[m]]) or (float("nan"),) * 2
            cells.append(f"{mean(pooled[m], metric):.4f} [{lo:.4f}, {hi:.4f}]")
        spent = [b["ttpa"]["total"] if m == "ttpa" else b.get(m, 0) for b in budget.values()]
        tokens = "-" if m == "sft" else f"{sum(spent) / len(spent):,.0f}"
        print(
            f"{m:12s} {cells[0]:25s} {cells[1]:25s} {mean(pooled[m], 'parsed'):.3f}  {tokens}"
            f"  (n={len(pooled[m])})"
        )
    print("paired difference            ESM                          exact")
    for x, y in DIFFS:
        cells = []
        for metric in ("esm", "exact"):
            d = paired_difference(pooled[x], pooled[y], metric)
            lo, hi = d["ci"] or (float("nan"), float("nan"))
            cells.append(f"{d['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print(f"{x + ' - ' + y:28s} {cells[0]:28s} {cells[1]}  (n={d['n']})")

    span = [b["grpo_span_metrics"] for b in budget.values()]
    gain = sum(reward_gain(steps) for steps in span) / len(span)
    every = [m for b in budget.values() for arm in ARMS for m in b[f"{arm}_metrics"]]
    seconds = sum(m["rollout_tokens"] / m["rollout_tokens_per_s"] for m in every)
    rate = sum(m["rollout_tokens"] for m in every) / seconds
    ok = (
        paired_difference(pooled["grpo_span"], pooled["grpo_seq"], "esm")["ci"][0] > 0
        and paired_difference(pooled["grpo_span"], pooled["sft"], "esm")["ci"][0] > 0
    )
    print(
        "goal (GRPO-span above GRPO-sequence and SFT in mean ESM, paired 95% lower bound > 0): "
        + ("reached" if ok else "NOT reached")
    )
    means = {m: {k: mean(pooled[m], k) for k in ("esm", "exact")} for m in MODELS}
    print(
        "RESULT "
        + " ".join(f"esm_{m}={means[m]['esm']:.4f}" for m in MODELS)
        + " "
        + " ".join(f"exact_{m}={means[m]['exact']:.4f}" for m in MODELS)
        + f" reward_gain={gain:.4f} rollout_tokens_per_s={rate:.1f}"
    )


if __name__ == "__main__":
    main()
