"""Preference losses of the DPO family, as small tensor-only functions (DESIGN §6).

Each loss takes per-pair log-probabilities of the chosen and rejected completions under
the policy and the reference, shape `[B]`, and returns unreduced
`(losses [B], chosen_rewards [B], rejected_rewards [B])`; rewards are detached
`beta * (policy - reference)`. What the log-probs are (sums over the completion's tokens,
or sums over the tokens from the branch point on for token-level pairs, or averages for
IPO) is decided by the caller (`train/logprobs.py`), so token-level pairs need no path
of their own here.

- `sigmoid` — DPO (Rafailov et al. 2023, eq. 7), with conservative label smoothing
  (Mitchell 2023): `-(1-ε) log σ(βh) - ε log σ(-βh)`, `h` the log-ratio margin.
- `ipo` — IPO (Azar et al. 2023, eq. 17): `(h - 1/(2β))²`; meant for length-averaged
  log-probs (TRL does the same), which is why the token-level mask changes it.
- `esm_weighted` — TTPA's use of ESM in the loss: the sigmoid loss of each pair scaled by
  `w = floor + (1 - floor) · clamp(chosen_score - rejected_score, 0, 1)`, so pairs whose
  rejected call is nearly right (small ESM margin) pull less than pairs with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossOutput = tuple[Tensor, Tensor, Tensor]


def _margin(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    """h = (log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r)), shape [B]."""
    return (pc - rc) - (pr - rr)


def _rewards(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    return (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def sigmoid_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,  # no default here: `train.dpo.beta` (DPOConfig) holds it
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> LossOutput:
    """DPO's loss per pair; `weights [B]` (optional) scale each pair's loss."""
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )
    if weights is not None:
        losses = losses * weights
    return (
        losses,
        *_rewards(
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
        ),
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,  # no default here: `train.dpo.beta` (DPOConfig) holds it
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> LossOutput:
    """IPO's squared loss per pair (label smoothing does not apply to IPO)."""
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1 / (2 * beta)) ** 2
    if weights is not None:
        losses = losses * weights
    return (
        losses,
        *_rewards(
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
        ),
    )


def esm_weights(chosen_scores: Tensor, rejected_scores: Tensor, floor: float) -> Tensor:
    """`floor + (1 - floor) · clamp(chosen - rejected, 0, 1)`, shape [B], in [floor, 1]."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"esm weight floor must be in [0, 1], got {floor}")
    margin = (chosen_scores - rejected_scores).clamp(0.0, 1.0)
    return floor + (1.0 - floor) * margin


def esm_weighted_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,  # no default here: `train.dpo.beta` (DPOConfig) holds it
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> LossOutput:
    """The sigmoid loss scaled by ESM-margin weights (`esm_weights`); `weights` required."""
    if weights is None:
        raise ValueError("esm_weighted needs per-pair weights (see esm_weights)")
    return sigmoid_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        label_smoothing=label_smoothing,
        weights=weights,
    )


LOSSES: dict[str, Callable[..., LossOutput]] = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "esm_weighted": esm_weighted_loss,
}
# Losses whose log-probs are averaged over the completion's (unmasked) tokens.
LENGTH_NORMALISED = frozenset({"ipo"})


def get_loss(name: str) -> Callable[..., LossOutput]:
    """The loss function called `name`; an unknown name raises listing the valid ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss_type {name!r}; valid: {', '.join(LOSSES)}") from None
