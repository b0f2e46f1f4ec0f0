"""Ray wiring of training: examples in the driver, reference log-probs as a Ray Data stage,
the loop on Ray Train workers (`TorchTrainer` + DeepSpeed), the manifest.

    ttpa-ray train sft --config configs/tiny-cpu.yaml --data runs/x/construct --model DIR --out DIR
    ttpa-ray train dpo --config configs/tiny-cpu.yaml --data pairs.parquet --model DIR --out DIR
    ttpa-ray train grpo --config configs/tiny-cpu.yaml --data runs/x/construct --model SFT_DIR --out DIR

Rows that cannot become examples (no assistant tokens, a completion longer than
`max_len`, ...) go to `OUT/quarantine.parquet` with the reason; the manifest counts them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from ttpa_ray.atomic import write_atomic
from ttpa_ray.config import TrainConfig, apply_overrides
from ttpa_ray.runner import is_current, remarking
from ttpa_ray.schema.io import (
    StageCounts,
    config_hash,
    length_stats,
    model_files,
    read_rows,
    write_manifest,
    write_quarantine,
    write_rows,
)
from ttpa_ray.schema.records import QuarantineRecord
from ttpa_ray.train.data import (
    IGNORE,
    PairExample,
    SkipExample,
    pair_example,
    sft_example,
    sft_turn_examples,
)
from ttpa_ray.train.grpo_loop import TURN_COLUMNS, grpo_prompts

log = logging.getLogger("ttpa_ray")
MODES = ("sft", "dpo", "grpo")
PAIR_COLUMNS = ("prompt", "tools")


def data_rows(path: str | Path, mode: str) -> list[dict[str, Any]]:
    """Rows of `path`: a Parquet file, a directory of them, a construct output directory
    (sft, grpo: its `episodes/train.parquet`) or a sample output directory (dpo: its
    `pairs.parquet`). GRPO reads episodes or turns (`schema.turns.TURN_SCHEMA`)."""
    p = Path(path)
    if mode in ("sft", "grpo") and (p / "episodes" / "train.parquet").exists():
        p = p / "episodes" / "train.parquet"
    if mode == "dpo" and (p / "pairs.parquet").is_file():
        p = p / "pairs.parquet"
    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files or not all(f.exists() for f in files):
        raise FileNotFoundError(f"no Parquet data at {path}")
    rows = [r for f in files for r in read_rows(f)]
    if not rows:
        raise ValueError(f"{path}: the dataset is empty")
    need: tuple[str, ...] = ("messages", "tools") if mode == "sft" else PAIR_COLUMNS
    if mode == "grpo":
        need = TURN_COLUMNS if "gold_calls" in rows[0] else ("messages", "tools")
    missing = [c for c in need if c not in rows[0]]
    if mode == "dpo" and not ({"chosen", "chosen_text"} & rows[0].keys()):
        missing.append("chosen|chosen_text")
    if missing:
        raise ValueError(f"{path}: {mode} data lacks column(s) {missing}")
    return rows


def prepare_examples(
    mode: str, rows: list[dict[str, Any]], tokenizer: Any, cfg: TrainConfig
) -> tuple[list[Any], list[QuarantineRecord], int]:
    """Tokenised examples, quarantine records for what cannot be used, and how many
    examples omit old tool results to fit `max_len` (nothing is cut from the left).

    SFT with `examples: turns` makes one example per tool-call turn (`sft_turn_examples`),
    GRPO one prompt per turn (`grpo_prompts`); their quarantine records are per turn, so
    rows in = episodes and the counts are kept by the caller in turns (see `run_training`)."""
    examples: list[Any] = []
    bad: list[QuarantineRecord] = []
    fitted = 0
    stage = f"train.{mode}"
    if mode == "grpo":
        prompts, bad = grpo_prompts(tokenizer, rows, cfg)
        return prompts, bad, sum(int(p.fitted) for p in prompts)
    for i, row in enumerate(rows):
        if mode == "sft" and cfg.examples == "turns":
            got, skipped = sft_turn_examples(
                tokenizer,
                row,
                cfg.max_len,
                distractors=cfg.distractors,
                max_turns=cfg.max_turns_per_episode,
                final_answers=cfg.final_answers,
                seed=cfg.seed,
                max_prompt_tokens=cfg.max_prompt_tokens,
            )
            examples += got
            fitted += sum(int(e.fitted) for e in got)
            bad += [QuarantineRecord.of(stage, rid, reason, row) for rid, reason in skipped]
            continue
        make = sft_example if mode == "sft" else pair_example
        try:
            ex = make(tokenizer, row, cfg.max_len)
        except SkipExample as e:
            bad.append(QuarantineRecord.of(stage, row.get("id", i), str(e), row))
            continue
        fitted += int(ex.fitted)
        examples.append(ex)
    return examples, bad, fitted


class ReferenceLogps:
    """Ray Data actor stage: per-token reference log-probs of each pair, one no-grad pass."""

    def __init__(
        self, model_dir: str, pad_id: int, device: str = "cpu", dtype: str = "float32"
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from ttpa_ray.storage import local_path

        model: Any = AutoModelForCausalLM.from_pretrained(
            local_path(model_dir), local_files_only=True, dtype=getattr(torch, dtype)
        )
        self.model = model.to(torch.device(device)).eval()
        self.pad_id = pad_id

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from ttpa_ray.train.objectives import precompute_reference

        n = len(batch["prompt_ids"])
        examples = [
            PairExample(
                [int(t) for t in batch["prompt_ids"][i]],
                [int(t) for t in batch["chosen_ids"][i]],
                [int(t) for t in batch["rejected_ids"][i]],
            )
            for i in range(n)
        ]
        precompute_reference(self.model, examples, self.pad_id, batch_size=n)
        return {
            "index": batch["index"],
            "ref_chosen": [e.extra["ref_chosen"] for e in examples],
            "ref_rejected": [e.extra["ref_rejected"] for e in examples],
        }


def reference_placement(cfg: TrainConfig) -> tuple[dict[str, Any], str, str]:
    """Where the reference pass runs: Ray remote args, torch device and dtype. On GPU
    training it takes one of the training GPUs (same `accelerator_type`) in the training
    precision; the actor is gone ~1 s after the pass, before the trainers start."""
    from ttpa_ray.ray_utils import remote_args

    cpus = min(1.0, cfg.cpus_per_worker)
    if not cfg.use_gpu:
        return remote_args(cpus), "cpu", "float32"
    dtype = "float32" if cfg.bf16 is False else "bfloat16"
    return remote_args(cpus, 1, cfg.accelerator_type), "cuda", dtype


def add_reference(
    examples: list[PairExample],
    model_dir: str,
    pad_id: int,
    remote: dict[str, Any] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> None:
    """Fill `extra["ref_chosen"|"ref_rejected"]` of every pair with a Ray Data actor stage
    (`remote`: its Ray resources, default one CPU)."""
    import ray

    rows = [
        {
            "index": i,
            "prompt_ids": e.prompt_ids,
            "chosen_ids": e.chosen_ids,
            "rejected_ids": e.rejected_ids,
        }
        for i, e in enumerate(examples)
    ]
    ds = ray.data.from_items(rows).map_batches(
        ReferenceLogps,
        fn_constructor_args=(model_dir, pad_id, device, dtype),
        batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="numpy",
        **(remote or {"num_cpus": 1.0}),
    )
    for row in ds.iter_rows():
        e = examples[int(row["index"])]
        e.extra["ref_chosen"] = [float(x) for x in row["ref_chosen"]]
        e.extra["ref_rejected"] = [float(x) for x in row["ref_rejected"]]


REFERENCE_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("ref_chosen", pa.list_(pa.float32())),
        ("ref_rejected", pa.list_(pa.float32())),
    ]
)


def reference_logps(
    examples: list[PairExample],
    model_dir: Path,
    data: str | Path,
    cfg: TrainConfig,
    out: Path,
    pad_id: int,
    model_uri: str | None = None,
) -> None:
    """Attach reference per-token log-probs to `examples`: from `out/reference.parquet` when
    it was computed for the same model, data and `max_len`, else with the Ray Data stage
    (and stored there, next to the run, so a re-run or a resumed run does not recompute)."""
    key = config_hash(
        {
            "model": str(model_dir),
            "model_files": model_files(model_dir),
            "data": str(Path(data).resolve()),
            "max_len": cfg.max_len,
            "pairs": len(examples),
        }
    )
    path, meta = out / "reference.parquet", out / "reference.json"
    if path.exists() and is_current(meta, key):  # an unreadable marker: warned, recomputed
        for r in read_rows(path):
            e = examples[int(r["row"])]
            e.extra["ref_chosen"], e.extra["ref_rejected"] = (
                list(r["ref_chosen"]),
                list(r["ref_rejected"]),
            )
        return
    with remarking(meta, key):
        remote, device, dtype = reference_placement(cfg)
        add_reference(examples, model_uri or str(model_dir), pad_id, remote, device, dtype)
        rows = [
            {"row": i, "ref_chosen": e.extra["ref_chosen"], "ref_rejected": e.extra["ref_rejected"]}
            for i, e in enumerate(examples)
        ]
        write_rows(path, rows, REFERENCE_SCHEMA)


def _metric_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of rank 0's `metrics.jsonl`. A line torn by a killed worker (the
    restarted one appends after it) is skipped with a warning: it must not fail a run
    whose model is already exported."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            log.warning("%s:%d: not a JSON line (torn by a restart?); skipped", path, n)
    return rows


LORA_AUTO_PARAMS = 100_000_000


def resolve_lora(cfg: TrainConfig, model_dir: Path) -> TrainConfig:
    """`lora.enabled: None` → on for models above 100M parameters, off below (counted on
    the meta device: nothing is allocated)."""
    if cfg.lora.enabled is not None:
        return cfg
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    n = sum(p.numel() for p in model.parameters())
    enabled = n > LORA_AUTO_PARAMS
    if not enabled and cfg.dpo.reference == "adapter_disabled":
        raise ValueError(f"dpo.reference adapter_disabled needs LoRA; {n:,} parameters turn it off")
    return apply_overrides(cfg, {"lora": {"enabled": enabled}}, "train")


def scaling_config(cfg: TrainConfig) -> Any:
    """Ray Train's worker group from the `train` section (what the autoscaler provisions)."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=cfg.workers,
        use_gpu=cfg.use_gpu,
        accelerator_type=cfg.accelerator_type,
        resources_per_worker={
            **cfg.resources_per_worker,
            "CPU": cfg.cpus_per_worker,
            **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
        },
    )


def run_training(
    mode: str,
    cfg: TrainConfig,
    data: str | Path,
    model_dir: str | Path,
    out: str | Path,
    sync_uri: str | None = None,
    model_uri: str | None = None,
) -> dict[str, Any]:
    """Train (`sft`, `dpo` or `grpo`) on Ray Train workers; export to `out/model`; the
    manifest.

    With `sync_uri` (the stage's dir in a run dir on s3:// or gs://), Ray Train keeps its
    checkpoints there and rank 0 uploads the export, which is pulled back into `out`;
    workers then load the base model from `model_uri` (a URI), the driver from `model_dir`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; valid: {', '.join(MODES)}")
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from ttpa_ray.ray_utils import init_ray
    from ttpa_ray.storage import download, join
    from ttpa_ray.train.loop import SYNCED, train_loop_per_worker

    t0 = time.perf_counter()
    out, model_dir = Path(out).resolve(), Path(model_dir).resolve()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    cfg = resolve_lora(cfg, model_dir)
    if mode == "grpo" and cfg.grpo.rollout == "vllm":
        from ttpa_ray.train.vllm_rollouts import require_vllm_rollouts

        require_vllm_rollouts()  # here, not in a worker after the cluster has started
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer in {model_dir} has no chat template")
    rows = data_rows(data, mode)
    examples: list[Any]
    examples, bad, fitted = prepare_examples(mode, rows, tokenizer, cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_quarantine(out / "quarantine.parquet", bad)
    # SFT turns, GRPO: the unit is a turn (one example or one quarantine record each)
    per_turn = mode == "grpo" or (mode == "sft" and cfg.examples == "turns")
    n_in = len(examples) + len(bad) if per_turn else len(rows)
    counts = StageCounts(f"train.{mode}.examples", n_in, len(examples), len(bad)).check()
    if mode == "sft":  # SFT prompts are the label-free head of each example
        prompts = [next((i for i, t in enumerate(e.labels) if t != IGNORE), 0) for e in examples]
    else:
        prompts = [len(e.prompt_ids) for e in examples]
    if not examples:
        raise ValueError(
            f"no usable {mode} examples: all {len(rows)} rows quarantined ({bad[0].reason})"
        )
    if len(examples) < cfg.workers:
        raise ValueError(
            f"{len(examples)} examples for {cfg.workers} workers: need at least one each"
        )
    n_examples = len(examples)
    if mode == "sft" and cfg.packing:
        from ttpa_ray.train.data import pack_sft

        packed = pack_sft(examples, cfg.max_len)
        # Packing must leave every worker a row; tiny datasets train unpacked instead.
        examples = list(packed) if len(packed) >= cfg.workers else examples
    init_ray()
    pad_id = int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    if mode == "dpo" and cfg.dpo.reference == "precomputed":
        reference_logps(examples, model_dir, data, cfg, out, pad_id, model_uri)
    loop_config = {
        "mode": mode,
        "train": cfg,
        "model_dir": model_uri or str(model_dir),
        "out_dir": str(out),
        "sync_uri": sync_uri,
        "pad_id": pad_id,
        "examples": ray.put(examples),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"{mode}",
            storage_path=join(sync_uri, "ray") if sync_uri else str(out / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    t_fit = time.time()
    result = trainer.fit()
    marker = out / "final_logps.json"  # rank 0 writes it last, after the model
    if sync_uri and not (marker.exists() and marker.stat().st_mtime >= t_fit):
        # rank 0 ran on another node: its export reached this driver only via the URI
        for name in SYNCED:
            download(join(sync_uri, name), out / name)
    metrics = _metric_lines(out / "metrics.jsonl")
    extra = {
        "mode": mode,
        "fitted": fitted,
        "prompt_tokens": length_stats(prompts),
        "examples": n_examples,
        "rows": len(examples),  # after SFT packing
        "steps": metrics[-1]["step"] if metrics else 0,
        "final": metrics[-1] if metrics else {},
        "checkpoint": str(result.checkpoint.path) if result.checkpoint else None,
        "model": str(out / "model"),
    }
    write_manifest(
        out,
        [
            counts,
            StageCounts(
                f"train.{mode}", len(examples), len(examples), 0, round(time.perf_counter() - t0, 2)
            ),
        ],
        config=cfg.model_dump(mode="json"),
        extra=extra,
    )
    write_atomic(out / "config.resolved.json", cfg.model_dump_json(indent=2))
    return json.loads((out / "manifest.json").read_text())


__all__ = ["MODES", "add_reference", "data_rows", "prepare_examples", "run_training"]
