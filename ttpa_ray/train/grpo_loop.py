"""GRPO on a Ray Train worker: rollouts from the live policy, ESM rewards, the clipped update.

`loop.Trainer` owns the DeepSpeed engine, checkpoints, metrics and export; in mode `grpo`
its `train_step` is `GRPOStep.step`:

    rollout step s: prompts = batch_at(prompts, s, prompts_per_step, seed)
        → per prompt, `group_size` completions from the current policy (`HFSampler.group`:
          the prompt forwarded once, its KV cache expanded to the group, finished rows
          leaving the batch; seeded by (seed, s, prompt), so a resumed run replays them)
        → rewards (`grpo.score_completion`) → per-token advantages (`grpo.span_advantages`)
        → `epochs_per_batch` optimizer updates, each one pass over the whole rollout batch
          in micro-batches of `micro_batch_size` rows (one DeepSpeed accumulation)

Old log-probs are the first pass's own (detached): no update happens before the end of a
pass, so they are the rollout policy's, with no extra forward (TRL does the same). The
reference log-probs (starting weights: the LoRA policy with its adapter disabled, else a
frozen copy) are computed in that pass too and kept for the later ones.

The LR schedule counts optimizer updates: `max_steps` and `warmup_steps` are rollout
steps, each `epochs_per_batch` updates (`engine_config`), so the LR at a rollout step does
not depend on `epochs_per_batch`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ttpa_ray.config import SampleConfig, TrainConfig, apply_overrides
from ttpa_ray.schema.records import QuarantineRecord
from ttpa_ray.schema.turns import Turn
from ttpa_ray.train.data import _pad, fitted_turns, turn_prompt_ids
from ttpa_ray.train.loop import batch_at

STAGE = "train.grpo"
TURN_COLUMNS = ("prompt", "tools", "gold_calls")  # a turns Parquet (schema.turns.TURN_SCHEMA)


@dataclass
class GRPOPrompt:
    """One tool-call turn to roll out: its prompt ids (as SFT, TPS and eval tokenise it)
    and what the reward needs (gold calls and offered tools, JSON)."""

    id: str
    prompt_ids: list[int]
    gold_calls: str
    tools: str
    fitted: bool = False  # the prompt omits old tool results to fit max_prompt_tokens


def grpo_prompts(
    tokenizer: Any, rows: list[dict[str, Any]], cfg: TrainConfig
) -> tuple[list[GRPOPrompt], list[QuarantineRecord]]:
    """Rows of an episodes Parquet (turns by `data.fitted_turns`, the prompt fit SFT uses)
    or of a turns Parquet (taken as they are) → prompts, and the turns that cannot be used.
    A prompt that leaves fewer than `grpo.max_tokens` of `max_len` is quarantined (never
    cut: a cut prompt is not the turn)."""
    prompts: list[GRPOPrompt] = []
    bad: list[QuarantineRecord] = []
    room = cfg.max_len - cfg.grpo.max_tokens
    for row in rows:
        if all(c in row for c in TURN_COLUMNS):
            turns = [Turn.from_row(row)]
        else:
            turns, skipped = fitted_turns(
                tokenizer, row, cfg.max_turns_per_episode, cfg.distractors, cfg.max_prompt_tokens
            )
            bad += skipped
        for t in turns:
            ids = turn_prompt_ids(tokenizer, t)
            if len(ids) > room:
                reason = (
                    f"too_long: prompt of {len(ids)} tokens + grpo.max_tokens "
                    f"{cfg.grpo.max_tokens} > max_len {cfg.max_len}"
                )
                bad.append(QuarantineRecord.of(STAGE, t.id, reason, t.to_row()))
                continue
            prompts.append(
                GRPOPrompt(
                    t.id,
                    ids,
                    json.dumps(t.gold_calls, ensure_ascii=False),
                    json.dumps(t.tools, ensure_ascii=False),
                    t.omitted_results > 0,
                )
            )
    return prompts, bad


def engine_config(cfg: TrainConfig) -> TrainConfig:
    """The `train` settings DeepSpeed is configured from in GRPO: one optimizer update
    accumulates every micro-batch of a rollout batch, and the LR schedule counts updates
    (`epochs_per_batch` per rollout step)."""
    g = cfg.grpo
    rows = g.prompts_per_step * g.group_size
    updates = {
        "grad_accum": math.ceil(rows / cfg.micro_batch_size),
        "max_steps": cfg.max_steps * g.epochs_per_batch,
        "warmup_steps": cfg.warmup_steps * g.epochs_per_batch,
    }
    return apply_overrides(cfg, updates, "train")


def frozen_copy(model: Any, device: torch.device) -> Any:
    """The starting weights as the KL reference when there is no adapter to disable."""
    import copy

    ref = copy.deepcopy(model).to(device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@dataclass
class Rollout:
    """One completion of a rollout batch: ids, per-token advantages, and (after the first
    pass) the rollout policy's and the reference's per-token log-probs."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantages: list[float]
    old_logps: list[float] = field(default_factory=list)
    ref_logps: list[float] = field(default_factory=list)


Group = tuple[list[list[int]], list[float], int]  # completions, summed log-probs, forwarded


class Rollouts(Protocol):
    """Where a rollout batch's groups come from (`grpo.rollout`)."""

    def groups(
        self, prompts: list[list[int]], n: int, max_tokens: int, keys: list[str]
    ) -> list[Group]:
        """Per prompt, `n` completions (ids through the end-of-turn token, or `max_tokens`),
        their summed log-probs and the tokens forwarded; seeded by `keys` (one per prompt)."""
        ...

    def sync(self, step: int, module: Any) -> None:
        """Make the next `groups` sample from `module`'s weights, version `step`."""
        ...


class HFRollouts:
    """`grpo.rollout: hf`: the live policy samples in this worker (`HFSampler.group`)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def groups(
        self, prompts: list[list[int]], n: int, max_tokens: int, keys: list[str]
    ) -> list[Group]:
        return [self.sampler.group(p, n, max_tokens, k) for p, k in zip(prompts, keys, strict=True)]

    def sync(self, step: int, module: Any) -> None:
        """Nothing to do: the sampler reads the live module."""


class GRPOStep:
    """One rollout step on a worker (`Trainer` passes itself: engine, device, prompts, ...)."""

    def __init__(self, trainer: Any, reference: Any) -> None:
        from transformers import AutoTokenizer

        from ttpa_ray.engines.base import eos_ids
        from ttpa_ray.sample.hf_sampler import HFSampler, PolicyView

        self.t = trainer
        self.cfg: TrainConfig = trainer.cfg
        self.g = self.cfg.grpo
        self.reference = reference
        self.accum = engine_config(self.cfg).grad_accum
        module = trainer.engine.module
        self.tok = AutoTokenizer.from_pretrained(trainer.c["model_dir"], local_files_only=True)
        self.eos = eos_ids(self.tok, module.generation_config.eos_token_id)
        context = int(getattr(module.config, "max_position_embeddings", 0) or self.cfg.max_len)
        view = PolicyView(module, self.tok, self.eos, trainer.device, context)
        settings = SampleConfig(
            n=self.g.group_size,
            temperature=self.g.temperature,
            top_p=self.g.top_p,
            max_tokens=self.g.max_tokens,
            seed=self.cfg.seed,
            kv_reuse=True,
        )
        self.rollouts: Rollouts
        if self.g.rollout == "vllm":
            from ttpa_ray.train.vllm_rollouts import VLLMRollouts

            self.rollouts = VLLMRollouts.for_trainer(trainer, self.eos)
        else:
            self.rollouts = HFRollouts(HFSampler(view, settings))

    # -- rollouts ----------------------------------------------------------------------------

    def rollout(self, step: int) -> tuple[list[Rollout], dict[str, float]]:
        """The rollout batch of rollout step `step` (0-based) and its reward metrics."""
        from ttpa_ray.sample.tokens import completion_text
        from ttpa_ray.train.grpo import STRUCTURE, score_completion, span_advantages, token_parts

        prompts = batch_at(self.t.examples, step, self.g.prompts_per_step, self.cfg.seed)
        module = self.t.engine.module
        module.eval()  # no dropout while sampling
        t0 = time.perf_counter()
        rows: list[Rollout] = []
        rewards, forwarded, zero_var = [], 0, 0
        groups = self.rollouts.groups(
            [p.prompt_ids for p in prompts],
            self.g.group_size,
            self.g.max_tokens,
            [f"{step}:{p.id}" for p in prompts],
        )
        for p, (seqs, _, fwd) in zip(prompts, groups, strict=True):
            forwarded += fwd
            group = [
                score_completion(
                    completion_text(self.tok, ids, set(self.eos)), p.gold_calls, p.tools, self.g
                )
                for ids in seqs
            ]
            if self.g.advantage == "span":
                labels = [token_parts(self.tok, ids) for ids in seqs]
            else:  # every token carries the sequence advantage: no labels needed
                labels = [[STRUCTURE] * len(ids) for ids in seqs]
            advs = span_advantages(group, labels, self.g)
            rows += [Rollout(p.prompt_ids, ids, a) for ids, a in zip(seqs, advs, strict=True)]
            rewards += group
            zero_var += int(len({r.reward for r in group}) == 1)
        seconds = time.perf_counter() - t0
        module.train()
        n = len(rewards)
        metrics = {
            "reward": sum(r.reward for r in rewards) / n,
            "reward/esm": sum(r.esm for r in rewards) / n,
            **{
                f"reward/{k}": sum(r.parts[k] for r in rewards) / n
                for k in ("name", "key", "value")
            },
            "exact": sum(r.exact for r in rewards) / n,
            "parse_rate": sum(r.parsed for r in rewards) / n,
            "zero_var_groups": zero_var / len(prompts),
            "rollout_tokens": float(forwarded),
            "rollout_seconds": seconds,
        }
        return rows, metrics

    # -- updates -------------------------------------------------------------------------------

    def _collate(self, rows: list[Rollout]) -> dict[str, torch.Tensor]:
        pad = int(self.t.c["pad_id"])
        out: dict[str, torch.Tensor] = {}
        out["prompt_ids"], out["prompt_mask"] = _pad([r.prompt_ids for r in rows], pad, True)
        out["ids"], out["mask"] = _pad([r.completion_ids for r in rows], pad, False)
        width = out["ids"].shape[1]
        for key in ("advantages", "old_logps", "ref_logps"):
            values = torch.zeros((len(rows), width), dtype=torch.float32)
            for i, r in enumerate(rows):
                v = getattr(r, key)
                values[i, : len(v)] = torch.tensor(v, dtype=torch.float32)
            out[key] = values
        return {k: v.to(self.t.device) for k, v in out.items()}

    def update(self, rows: list[Rollout], first: bool) -> dict[str, float]:
        """One optimizer update over all `rows` (the first pass also records the old and
        reference log-probs). The step's loss is the token mean over every completion token
        of the rollout batch on every worker, as `grpo_loss` defines it for one batch."""
        from ttpa_ray.train.grpo import grpo_loss
        from ttpa_ray.train.logprobs import concat_logps

        mbs = self.cfg.micro_batch_size
        chunks = [rows[i : i + mbs] for i in range(0, len(rows), mbs)]
        assert len(chunks) == self.accum, (len(chunks), self.accum)
        mine = sum(len(r.completion_ids) for r in rows)
        total = torch.tensor(float(mine))
        if self.t.world > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        # DeepSpeed divides each micro-batch's loss by `accum` and averages gradients over
        # workers; scaling the chunk's token mean back gives the token mean of the whole batch.
        scale = self.accum * self.t.world / max(float(total), 1.0)
        sums: dict[str, float] = {}
        tokens = 0
        for chunk in chunks:
            b = self._collate(chunk)
            logps = concat_logps(
                self.t.engine, b["prompt_ids"], b["prompt_mask"], b["ids"], b["mask"]
            )
            if first:
                old = logps.detach()
                with torch.no_grad():
                    ref = concat_logps(
                        self.reference, b["prompt_ids"], b["prompt_mask"], b["ids"], b["mask"]
                    )
                for i, r in enumerate(chunk):
                    r.old_logps = old[i, : len(r.completion_ids)].tolist()
                    r.ref_logps = ref[i, : len(r.completion_ids)].tolist()
            else:
                old, ref = b["old_logps"], b["ref_logps"]
            loss, m = grpo_loss(
                logps, old, ref, b["advantages"], b["mask"], self.g.clip_eps, self.g.kl_beta
            )
            n = int(b["mask"].sum())
            self.t.engine.backward(loss * n * scale)
            self.t.engine.step()  # DeepSpeed applies the update at the accumulation boundary
            for k, v in m.items():  # token-weighted: this worker's means over the batch
                sums[k] = sums.get(k, 0.0) + v * n / max(mine, 1)
            tokens += int(b["prompt_mask"].sum()) + n
        sums["tokens"] = tokens
        return sums

    def step(self, step: int) -> dict[str, float]:
        """Rollout step `step` (0-based): one rollout batch, `epochs_per_batch` updates.
        Update metrics are the last pass's; `tokens` counts every pass's trained tokens."""
        # The weights after `step` rollout steps (also right after a resume: the engines of
        # `rollout: vllm` start from the model dir, not the checkpoint).
        self.rollouts.sync(step, self.t.engine.module)
        rows, metrics = self.rollout(step)
        tokens = 0
        for epoch in range(self.g.epochs_per_batch):
            update = self.update(rows, first=epoch == 0)
            tokens += int(update.pop("tokens"))
        metrics = _mean_over_workers(metrics, self.t.world)
        metrics.update(update, tokens=tokens)
        seconds = metrics.pop("rollout_seconds")
        metrics["rollout_tokens_per_s"] = metrics["rollout_tokens"] * self.t.world / seconds
        metrics["rollout_tokens"] *= self.t.world  # summed over workers
        return metrics


def _mean_over_workers(metrics: dict[str, float], world: int) -> dict[str, float]:
    """Every worker's rollout metrics averaged (the reward of the whole rollout batch)."""
    if world == 1 or not torch.distributed.is_initialized():
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return {k: float(v) / world for k, v in zip(keys, values, strict=True)}
