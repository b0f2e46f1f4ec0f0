"""The training loop each Ray Train worker runs: DeepSpeed engine, batches, checkpoints.

    fit: load model (+ LoRA) → deepspeed.initialize → resume from Ray Train's checkpoint
         → for each optimizer step: `grad_accum` micro-batches (SFT or DPO objective)
           (GRPO: for each rollout step, `grpo_loop.GRPOStep`: rollouts, then updates)
         → metrics (rank 0: JSON lines + TensorBoard) → checkpoint every K steps
         → gather the final weights (ZeRO-3: on rank 0) → export an HF directory.

Batches are a pure function of the micro-step index (a seeded permutation per epoch), so
a restarted worker group continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ttpa_ray.atomic import write_json_atomic
from ttpa_ray.config import TrainConfig
from ttpa_ray.storage import join, local_path, upload
from ttpa_ray.train.data import IGNORE, collate_pairs, collate_sft
from ttpa_ray.train.objectives import AdapterDisabled, dpo_loss, sft_loss

# what rank 0 writes that the driver reads after fit() (mirrored through `sync_uri`)
SYNCED = ("model", "metrics.jsonl", "final_logps.json")


def batch_at(examples: list[Any], index: int, size: int, seed: int) -> list[Any]:
    """The `index`-th micro-batch of an endless, per-epoch shuffled pass over `examples`."""
    per_epoch = max(1, len(examples) // size)
    epoch, k = divmod(index, per_epoch)
    order = list(range(len(examples)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return [examples[i] for i in order[k * size : (k + 1) * size]] or [examples[order[0]]]


def _count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


class Trainer:
    """One worker's training run (`train_loop_per_worker` builds and `fit`s it)."""

    def __init__(self, c: dict[str, Any]) -> None:
        import deepspeed
        import ray.train
        from transformers import AutoModelForCausalLM

        self.c = c
        self.cfg: TrainConfig = c["train"]  # the validated config itself (Ray pickles it)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.on_gpu = torch.cuda.is_available() and self.cfg.use_gpu
        self.device = (
            torch.device("cuda", ctx.get_local_rank()) if self.on_gpu else torch.device("cpu")
        )
        torch.manual_seed(self.cfg.seed)
        # a URI (the run dir on s3:// or gs://) is downloaded once per node
        c["model_dir"] = local_path(c["model_dir"])
        model: Any = AutoModelForCausalLM.from_pretrained(
            c["model_dir"], local_files_only=True, dtype=torch.float32
        )
        if self.cfg.lora.enabled:
            from ttpa_ray.train.export import lora_model

            model = lora_model(model, self.cfg)
        self.n_params = _count_params(model)
        from ttpa_ray.train import grpo_loop
        from ttpa_ray.train.ds import deepspeed_config, measure_matmul_flops, use_cpu_shm_comm

        grpo = c["mode"] == "grpo"
        # GRPO's KL reference without LoRA: the starting weights, copied before training
        frozen = (
            grpo_loop.frozen_copy(model, self.device)
            if grpo and not self.cfg.lora.enabled
            else None
        )
        if not self.on_gpu:
            use_cpu_shm_comm(self.cfg.cpu_shm_comm)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(
                grpo_loop.engine_config(self.cfg) if grpo else self.cfg, self.on_gpu
            ),
        )
        self.peak_flops = measure_matmul_flops(int(model.config.hidden_size) * 4, self.device)
        self.examples = ray.get(c["examples"])[self.rank :: self.world]
        if not self.examples:
            raise ValueError(f"rank {self.rank}: no training examples (fewer rows than workers?)")
        self.dpo = self.cfg.dpo if c["mode"] == "dpo" else None  # None: SFT
        self.reference = (
            AdapterDisabled(self.engine.module)
            if self.cfg.dpo.reference == "adapter_disabled"
            else None
        )
        self.grpo = (
            grpo_loop.GRPOStep(
                self, frozen if frozen is not None else AdapterDisabled(self.engine.module)
            )
            if grpo
            else None
        )
        self.out = Path(c["out_dir"])
        self.step = 0

    # -- checkpoints -----------------------------------------------------------------------

    def resume(self) -> None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            self.engine.load_checkpoint(d, tag="ds")
            self.step = json.loads((Path(d) / "state.json").read_text())["step"]

    def save(self, metrics: dict[str, Any]) -> None:
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as d:
            self.engine.save_checkpoint(d, tag="ds")  # every rank writes its own shard files
            if self.rank == 0:
                write_json_atomic(Path(d) / "state.json", {"step": self.step})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    # -- one optimizer step ------------------------------------------------------------------

    def _batch(self, micro: int) -> dict[str, torch.Tensor]:
        items = batch_at(self.examples, micro, self.cfg.micro_batch_size, self.cfg.seed)
        pad = int(self.c["pad_id"])
        batch = collate_sft(items, pad) if self.dpo is None else collate_pairs(items, pad)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _sft_normaliser(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
        """What each micro-batch's summed cross-entropy is divided by, so that the step's
        gradient is the mean over every labelled token of the step on every worker, and
        this worker's labelled tokens. DeepSpeed divides each micro-batch's loss by
        `grad_accum` and averages gradients over the `world` workers; multiplying both back
        makes the update independent of how the rows are split into micro-batches and
        workers (1×8 ≡ 8×1)."""
        labelled = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        total = torch.tensor(float(labelled))
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return max(float(total), 1.0) / (self.cfg.grad_accum * self.world), labelled

    def train_step(self) -> dict[str, float]:
        if self.grpo is not None:
            return self.grpo.step(self.step)
        sums: dict[str, float] = {}
        tokens = 0
        micro = [
            self._batch(self.step * self.cfg.grad_accum + m) for m in range(self.cfg.grad_accum)
        ]
        normaliser, labelled = self._sft_normaliser(micro) if self.dpo is None else (None, 0)
        ce_sum = 0.0
        for batch in micro:
            if self.dpo is None:
                loss, metrics = sft_loss(self.engine, batch, normaliser)
                ce_sum += metrics.pop("ce_sum")
                real = batch["token_mask"] if "token_mask" in batch else batch["attention_mask"]
                tokens += int(real.sum())
            else:
                loss, metrics = dpo_loss(self.engine, batch, self.dpo, self.reference)
                # the prompt is forwarded once, each completion once (shared-prefix packing)
                tokens += int(
                    batch["prompt_mask"].sum()
                    + batch["chosen_mask"].sum()
                    + batch["rejected_mask"].sum()
                )
            self.engine.backward(loss)
            self.engine.step()  # DeepSpeed applies the update at the accumulation boundary
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / self.cfg.grad_accum
        if self.dpo is None:  # this worker's token mean over the whole step
            sums["loss"] = ce_sum / max(labelled, 1)
        sums["tokens"] = tokens
        return sums

    def fit(self) -> None:
        self.resume()
        writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            # under Ray Train's storage path, beside the run's checkpoints
            writer = SummaryWriter(str(self.out / "ray" / "tensorboard"))
        while self.step < self.cfg.max_steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.step += 1
            seconds = time.perf_counter() - t0
            metrics.update(
                step=self.step,
                lr=float(self.engine.get_lr()[0]),
                tokens_per_s=metrics["tokens"] * self.world / seconds,
                # 6·N FLOPs per token (forward + backward), against measured torch.mm FLOP/s
                mfu=6 * self.n_params * metrics["tokens"] / seconds / self.peak_flops,
            )
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"{self.c['mode']}/{k}", v, self.step)
                with (self.out / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps({"mode": self.c["mode"], **metrics}) + "\n")
            self._maybe_fail()
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.max_steps:
                self.save(metrics)
        if writer is not None:
            writer.close()
        self.export()

    def _maybe_fail(self) -> None:
        """Fault-tolerance testing: rank 0 raises once at `fail_once_at_step`."""
        marker = self.out / ".failed_once"
        if self.cfg.fail_once_at_step == self.step and self.rank == 0 and not marker.exists():
            marker.write_text(str(self.step))
            raise RuntimeError(f"injected failure at step {self.step} (fail_once_at_step)")

    # -- export ----------------------------------------------------------------------------

    def export(self) -> None:
        if self.cfg.zero_stage == 3:
            # Collective: every rank takes part, rank 0 receives the whole state dict.
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        probe = self._probe_logps()
        if self.rank == 0:
            from ttpa_ray.train.export import export_model

            export_model(state, self.c["model_dir"], self.cfg, self.out / "model")
            # the driver takes this file as "the export is complete": whole or absent
            write_json_atomic(self.out / "final_logps.json", probe)
            if self.c.get("sync_uri"):
                # Rank 0 may run on another node than the driver: what the driver reads
                # after fit() goes through the run dir's storage.
                for name in SYNCED:
                    upload(self.out / name, join(self.c["sync_uri"], name))

    @torch.no_grad()
    def _probe_logps(self) -> dict[str, Any]:
        """Log-probs of a fixed batch under the trained engine (every rank runs the forward:
        under ZeRO-3 it is a collective), so the export can be checked against them."""
        from ttpa_ray.train.logprobs import concat_logps

        batch = collate_sft([_as_sft(e) for e in ray_get_probe(self.c)], int(self.c["pad_id"]))
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        logps = concat_logps(self.engine, ids[:, :1], mask[:, :1], ids[:, 1:], mask[:, 1:])
        return {
            "input_ids": batch["input_ids"].tolist(),
            "attention_mask": batch["attention_mask"].tolist(),
            "logps": logps.tolist(),
        }


def _as_sft(example: Any) -> Any:
    from ttpa_ray.train.data import SFTExample

    if isinstance(example, SFTExample):
        return example
    if hasattr(example, "position_ids"):  # a packed row: probed as one sequence
        return SFTExample(example.input_ids, example.labels)
    ids = example.prompt_ids + getattr(example, "chosen_ids", [])  # GRPO: the prompt alone
    return SFTExample(ids, ids)


def ray_get_probe(c: dict[str, Any]) -> list[Any]:
    import ray

    return ray.get(c["examples"])[:2]


def train_loop_per_worker(c: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point."""
    os.environ.setdefault("DS_BUILD_OPS", "0")
    Trainer(c).fit()
