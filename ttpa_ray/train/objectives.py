"""One batch → loss and metrics, for SFT and the DPO family. No Ray, no DeepSpeed: the
training loop (Ray Train + DeepSpeed) calls these on whatever module it wraps."""

from __future__ import annotations

from typing import Any

import torch

from ttpa_ray.config import DPOConfig
from ttpa_ray.train.data import IGNORE, PairExample, collate_pairs
from ttpa_ray.train.logprobs import branch_mask, reduce, shared_prefix_logps
from ttpa_ray.train.losses import LENGTH_NORMALISED, esm_weights, get_loss

Tensor = torch.Tensor


def sft_loss(
    model: Any, batch: dict[str, Tensor], normaliser: float | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy over the labelled (assistant) tokens of `[B, T]` batches (padded,
    with `attention_mask`, or packed, with `position_ids`): their mean, or, with
    `normaliser`, their sum divided by it — the token count of the whole optimizer step, so
    that micro-batches accumulated to one step give the update one batch of all their rows
    gives (a mean per micro-batch would weight a short micro-batch's tokens more).
    `metrics["ce_sum"]` is the summed cross-entropy, for the step's reported mean."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    # use_cache=False: no KV cache to build in training, and with a cache transformers
    # ignores packed `position_ids` (the block-diagonal mask needs no cache).
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    ce_sum = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels.flatten(),
        ignore_index=IGNORE,
        reduction="sum",
    )
    tokens = int((labels != IGNORE).sum())
    loss = ce_sum / (normaliser if normaliser is not None else max(tokens, 1))
    return loss, {"loss": ce_sum.item() / max(tokens, 1), "tokens": tokens, "ce_sum": ce_sum.item()}


def _masks(batch: dict[str, Tensor], token_level: bool) -> tuple[Tensor, Tensor]:
    if not token_level:
        return batch["chosen_mask"], batch["rejected_mask"]
    b = batch["branch_token_index"]
    return branch_mask(batch["chosen_mask"], b), branch_mask(batch["rejected_mask"], b)


def pair_token_logps(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-token log-probs `([B, C], [B, R])` with the prompt forwarded once per pair."""
    return shared_prefix_logps(
        model,
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["chosen_ids"],
        batch["chosen_mask"],
        batch["rejected_ids"],
        batch["rejected_mask"],
    )


def dpo_loss(
    model: Any, batch: dict[str, Tensor], cfg: DPOConfig, ref_model: Any = None
) -> tuple[Tensor, dict[str, float]]:
    """Mean preference loss of a collated pair batch, and its metrics (`cfg.reference` is
    the caller's: it chooses between the two sources below).

    Reference per-token log-probs come from the batch (`ref_chosen`, `ref_rejected`,
    precomputed: no reference model resident) or, if absent, from `ref_model` (for
    example the policy with its LoRA adapter disabled). Neither is an error.
    """
    pc_tok, pr_tok = pair_token_logps(model, batch)
    if "ref_chosen" in batch and "ref_rejected" in batch:
        rc_tok, rr_tok = batch["ref_chosen"], batch["ref_rejected"]
    elif ref_model is not None:
        with torch.no_grad():
            rc_tok, rr_tok = pair_token_logps(ref_model, batch)
    else:
        raise ValueError("no reference log-probs: precompute them or pass ref_model")
    mc, mr = _masks(batch, cfg.token_level)
    avg = cfg.loss_type in LENGTH_NORMALISED
    weights = (
        esm_weights(batch["chosen_score"], batch["rejected_score"], cfg.esm_floor)
        if cfg.loss_type == "esm_weighted"
        else None
    )
    losses, chosen_r, rejected_r = get_loss(cfg.loss_type)(
        reduce(pc_tok, mc, avg),
        reduce(pr_tok, mr, avg),
        reduce(rc_tok, mc, avg),
        reduce(rr_tok, mr, avg),
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        weights=weights,
    )
    loss = losses.mean()
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": chosen_r.mean().item(),
        "rewards/rejected": rejected_r.mean().item(),
        "rewards/accuracy": (chosen_r > rejected_r).float().mean().item(),
        "rewards/margin": (chosen_r - rejected_r).mean().item(),
    }
    return loss, metrics


class AdapterDisabled:
    """The LoRA policy with its adapter switched off: the reference with no second model
    and no precompute (the base weights are frozen under LoRA, so this *is* the start)."""

    def __init__(self, peft_model: Any) -> None:
        self.model = peft_model

    def __call__(self, **kwargs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model(**kwargs)


@torch.no_grad()
def precompute_reference(
    model: Any, examples: list[PairExample], pad_id: int, batch_size: int = 16
) -> list[PairExample]:
    """Store the reference per-token log-probs of each pair in `extra` (`ref_chosen`,
    `ref_rejected`), one batched no-grad pass, so training needs no resident reference."""
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        rc, rr = pair_token_logps(model, batch)
        for i, e in enumerate(chunk):
            e.extra["ref_chosen"] = rc[i, : len(e.chosen_ids)].float().tolist()
            e.extra["ref_rejected"] = rr[i, : len(e.rejected_ids)].float().tolist()
    return examples
