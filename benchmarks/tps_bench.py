"""TPS cost: token-level branching vs n-sampling, and prefix KV reuse vs none (HF engine).

Run: `make bench` (or `.venv/bin/python benchmarks/tps_bench.py [--turns 24 --sft-steps 150]`).

One run, one policy, the same turns for every variant. The policy is the tiny model after
a short in-process SFT warm start on the same kind of turns (an untrained model babbles,
which says nothing about a policy that is mostly right, the case TPS is for). Turns offer
the called tools + 1 distractor (the tiny model's context is 2,048 tokens).

- `n_sample`: n=5 samples at temperature 1; the prompt is forwarded once and its KV
  cache shared by the samples (our default).
- `n_sample (reference)`: the same samples with the prompt forwarded once per sample, as
  `generate(num_return_sequences=n)` or an endpoint without prefix caching computes them.
- `branch`: teacher-forced gold + greedy branches at divergent / least likely gold tokens,
  decoded on copies of the teacher-forced KV cache (our default).
- `branch (no KV reuse)`: the same branches, each recomputing prompt + gold prefix.

The RESULT ratio compares the two defaults (both share the prompt: the fair comparison);
the ratio against the reference n-sample is printed too.

Pairs come from the pair rule over ESM scores (threshold 0.8), as `ttpa-ray sample`
builds them. Forward tokens = tokens the model computed (prompt, teacher forcing, decode
steps). Times are wall-clock per variant over all turns, in one process.
Last line: RESULT tokens_per_pair_ratio_branch_vs_nsample=<float> kv_reuse_speedup=<float>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def warm_start(model: Any, tok: Any, turns: list[Any], steps: int, seed: int) -> float:
    """A short SFT on (prompt + gold turn) of `turns`; returns the last loss."""
    from ttpa_ray.train.data import collate_sft, sft_example

    examples = []
    for t in turns:
        row = {"messages": [*t.prompt[1:], t.gold], "system": t.prompt[0]["content"]}
        row["tools"] = json.dumps(t.tools)
        # the last 1,024 tokens hold the gold call and the tool it calls: enough to learn
        # the format and names, at half the cost of full prompts
        examples.append(sft_example(tok, row, max_len=1024))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = random.Random(seed)
    model.train()
    loss = float("nan")
    for _ in range(steps):
        batch = collate_sft(rng.sample(examples, min(4, len(examples))), tok.pad_token_id)
        out = model(**batch, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        loss = float(out.loss.detach())
    model.eval()
    return loss


def run_variant(sampler: Any, turns: list[Any], mode: str) -> dict[str, float]:
    from ttpa_ray.sample.pairs import ScoredCandidate, pair_rule
    from ttpa_ray.schema.tool_call_text import parse_prediction
    from ttpa_ray.score.esm import esm_score

    tokens = pairs = cands = 0
    t0 = time.perf_counter()
    for t in turns:
        got = sampler.sample(t, mode)
        tokens += got.forward_tokens
        from ttpa_ray.sample.candidates import dedupe

        kept = dedupe(got.candidates)
        cands += len(kept)
        # candidates are model text: the one text→calls function eval and TPS use
        scored = [
            ScoredCandidate(c, esm_score(parse_prediction(c.text)[0], t.gold_calls, t.tools))
            for c in kept
        ]
        pairs += len(pair_rule(scored, 0.8))
    seconds = time.perf_counter() - t0
    return {
        "tokens": tokens,
        "pairs": pairs,
        "candidates": cands,
        "seconds": seconds,
        "tokens_per_pair": tokens / max(pairs, 1),
        "pairs_per_s": pairs / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=24, help="turns sampled by every variant")
    ap.add_argument("--sft-steps", type=int, default=120)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))

    from ttpa_ray.config import BranchConfig, SampleConfig
    from ttpa_ray.construct.schema_teacher import build_episode
    from ttpa_ray.engines.hf_engine import HFEngine
    from ttpa_ray.sample.hf_sampler import HFSampler
    from ttpa_ray.schema.turns import episode_turns
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    tools = load_builtin().tools
    turns = []
    seed = 1000
    while len(turns) < args.turns:
        ep = build_episode(seed, tools).to_row()
        turns += episode_turns(ep, max_turns=2, distractors=1)[0]
        seed += 1
    turns = turns[: args.turns]
    train_turns = []
    for s in range(200):
        train_turns += episode_turns(build_episode(s, tools).to_row(), 2, distractors=1)[0]

    with tempfile.TemporaryDirectory() as tmp:
        texts = catalog_texts([t.to_openai() for t in tools], examples_per_tool=1)
        model_dir = create_tiny_model_dir(texts, Path(tmp) / "tiny")
        engine = HFEngine(model_dir)
        t0 = time.perf_counter()
        loss = warm_start(engine.model, engine.tokenizer, train_turns, args.sft_steps, args.seed)
        sft_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in engine.model.parameters())

        def sampler(**kw: Any) -> HFSampler:
            settings = SampleConfig(
                n=args.n,
                temperature=1.0,
                max_tokens=args.max_tokens,
                seed=args.seed,
                branch=BranchConfig(top_k=2, lowest_k=2, max_branches=8),
                **kw,
            )
            return HFSampler(engine, settings)

        # warm-up (allocator, kernels) on one turn, not timed
        sampler().sample(turns[0], "both")
        results = {
            "n_sample": run_variant(sampler(), turns, "n_sample"),
            "n_sample (reference)": run_variant(sampler(kv_reuse=False), turns, "n_sample"),
            "branch": run_variant(sampler(kv_reuse=True), turns, "branch"),
            "branch (no KV reuse)": run_variant(sampler(kv_reuse=False), turns, "branch"),
        }

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(
        f"policy: tiny model {n_params / 1e6:.2f}M params, SFT warm start {args.sft_steps} "
        f"steps ({sft_s:.0f}s, last loss {loss:.3f}); {len(turns)} turns, n={args.n}, "
        f"max_tokens={args.max_tokens}, branch top_k=2 lowest_k=2 max_branches=8"
    )
    print(
        f"{'variant':24s} {'pairs':>6s} {'cands':>6s} {'fwd tokens':>11s} "
        f"{'tok/pair':>9s} {'pairs/s':>8s} {'seconds':>8s}"
    )
    for name, r in results.items():
        print(
            f"{name:24s} {r['pairs']:6d} {r['candidates']:6d} {r['tokens']:11d} "
            f"{r['tokens_per_pair']:9.1f} {r['pairs_per_s']:8.2f} {r['seconds']:8.2f}"
        )
    ratio = results["branch"]["tokens_per_pair"] / results["n_sample"]["tokens_per_pair"]
    ref = results["branch"]["tokens_per_pair"] / results["n_sample (reference)"]["tokens_per_pair"]
    speedup = results["branch (no KV reuse)"]["seconds"] / results["branch"]["seconds"]
    tok_saving = results["branch (no KV reuse)"]["tokens"] / results["branch"]["tokens"]
    print(
        f"branch needs {ratio:.3f}× the forward tokens per pair of n_sample with a shared "
        f"prompt, {ref:.3f}× those of the reference n_sample (target ≤ 0.333); "
        f"KV reuse: {speedup:.2f}× faster, {tok_saving:.1f}× fewer forward tokens"
    )
    print(
        f"RESULT tokens_per_pair_ratio_branch_vs_nsample={ratio:.3f} kv_reuse_speedup={speedup:.3f} "
        f"tokens_per_pair_ratio_vs_reference_nsample={ref:.3f}"
    )


if __name__ == "__main__":
    main()
