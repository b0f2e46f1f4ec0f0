"""DPO training throughput: ttpa-ray (Ray Train + DeepSpeed, shared-prefix packing) vs TRL.

Run: `make bench` (or `.venv/bin/python benchmarks/dpo_vs_trl.py [--pairs 64 --steps 16]`).

Same tiny model, same tool-calling pairs (prompt = system + user query with the called
tool's schema, so prompts are long and completions short), same micro-batch, fp32, no
gradient checkpointing on either side, reference log-probs precomputed on both sides
(ours: a Ray Data stage; TRL: `precompute_ref_log_probs=True`), sigmoid loss. Each side's
throughput is its median optimizer-step time over the steps after a warm-up (start-up,
compilation and the reference pass excluded on both sides).

MFU: PaLM's model FLOPs per token (6·N + 12·layers·hidden·context) × tokens forwarded per
step / step time, against `torch.mm` FLOP/s measured at the model's own matmul shape
(`[tokens, hidden] × [hidden, intermediate]`); the 6·N-only figure is printed too.
Last line: RESULT pairs_per_s_ratio_vs_trl=<float> mfu=<float>
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def run_ours(
    pairs_path: Path, model_dir: Path, out: Path, batch: int, steps: int
) -> dict[str, float]:
    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.trainer import run_training

    cfg = TrainConfig.model_validate(
        {
            "max_len": 2048,
            "micro_batch_size": batch,
            "max_steps": steps,
            "lr": 1e-4,
            "warmup_steps": 0,
            "workers": 1,
            "cpus_per_worker": 1,
            "checkpoint_every": steps,
            "dpo": {"loss_type": "sigmoid", "beta": 0.1, "token_level": False},
        }
    )
    run_training("dpo", cfg, pairs_path, model_dir, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["tokens"] / r["tokens_per_s"] for r in rows[2:]]
    tokens = statistics.median(r["tokens"] for r in rows[2:])
    # mean attention context of a forwarded token: about the mean prompt + completion length
    from transformers import AutoTokenizer

    from ttpa_ray.schema.io import read_rows
    from ttpa_ray.train.data import pair_example

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    examples = [pair_example(tok, r, 2048) for r in read_rows(pairs_path)]
    context = statistics.mean(len(e.prompt_ids) + len(e.chosen_ids) / 2 for e in examples)
    return {"step_s": statistics.median(times), "tokens": tokens, "context": context}


def run_trl(
    rows: list[dict[str, Any]], model_dir: Path, out: Path, batch: int, steps: int
) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from ttpa_ray.schema.records import messages_to_openai

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    data = Dataset.from_list(
        [
            {
                "prompt": tok.apply_chat_template(
                    messages_to_openai(r["prompt"]),
                    tools=json.loads(r["tools"]),
                    add_generation_prompt=True,
                    tokenize=False,
                ),
                "chosen": r["chosen_text"] + tok.eos_token,
                "rejected": r["rejected_text"] + tok.eos_token,
            }
            for r in rows
        ]
    )
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append(time.perf_counter())

    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
        max_length=2048,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=10**6,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    trainer.add_callback(Clock())
    trainer.train()
    times = [b - a for a, b in zip(marks[2:], marks[3:], strict=False)]
    return {"step_s": statistics.median(times)}


def matmul_peak(tokens: int, hidden: int, inner: int) -> float:
    a, b = torch.randn(tokens, hidden), torch.randn(hidden, inner)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        torch.mm(a, b)
        reps += 1
    return 2 * tokens * hidden * inner * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM

    from ttpa_ray.ray_utils import init_ray
    from ttpa_ray.schema.io import write_rows
    from ttpa_ray.schema.records import PAIR_SCHEMA
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    # The pairs come from the tests' helper (the same pairs the DPO tests train on).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic_pairs import perturbed_pair_rows

    work = Path(tempfile.mkdtemp(prefix="dpo_vs_trl_"))
    tools = [t.to_openai() for t in load_builtin().tools]
    model_dir = create_tiny_model_dir(catalog_texts(tools, examples_per_tool=1), work / "tiny")
    rows = perturbed_pair_rows(args.pairs, kinds=("wrong_value", "drop_arg"))
    write_rows(work / "pairs.parquet", rows, PAIR_SCHEMA)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, torch {torch.__version__}"
    )
    print(
        f"model: tiny Llama {n_params / 1e6:.2f}M params; {args.pairs} pairs, micro-batch {args.batch}, "
        f"{args.steps} steps, fp32, no gradient checkpointing, sigmoid DPO, precomputed reference"
    )
    init_ray(num_cpus=os.cpu_count() or 2)
    ours = run_ours(work / "pairs.parquet", model_dir, work / "ours", args.batch, args.steps)
    trl = run_trl(rows, model_dir, work / "trl", args.batch, args.steps)
    ours_pps, trl_pps = args.batch / ours["step_s"], args.batch / trl["step_s"]
    cfg = model.config
    per_batch_tokens = int(ours["tokens"])
    peak = matmul_peak(per_batch_tokens, cfg.hidden_size, cfg.intermediate_size)
    # PaLM's MFU (Chowdhery et al. 2022, app. B): 6N per token plus attention's
    # 12·layers·hidden·context; on 700-token prompts and a 0.66M model attention is not small.
    context = ours["context"]
    per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * context
    mfu = per_token * per_batch_tokens / ours["step_s"] / peak
    mfu_6n = 6 * n_params * per_batch_tokens / ours["step_s"] / peak
    print(
        f"ours: {ours_pps:.1f} pairs/s (median step {ours['step_s'] * 1e3:.0f} ms, {per_batch_tokens} tokens forwarded/step)"
    )
    print(f"TRL DPOTrainer: {trl_pps:.1f} pairs/s (median step {trl['step_s'] * 1e3:.0f} ms)")
    print(
        f"torch.mm at [{per_batch_tokens}, {cfg.hidden_size}] x [{cfg.hidden_size}, "
        f"{cfg.intermediate_size}]: {peak / 1e9:.1f} GFLOP/s; MFU {mfu:.1%} "
        f"(6N + attention at mean context {context:.0f}); 6N only: {mfu_6n:.1%}"
    )
    print(f"RESULT pairs_per_s_ratio_vs_trl={ours_pps / trl_pps:.3f} mfu={mfu:.4f}")


if __name__ == "__main__":
    main()
