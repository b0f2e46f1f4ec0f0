"""DPO-family losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ttpa_ray.train.losses import LOSSES, esm_weights, get_loss

# One pair: log π(c) = -1, log π(r) = -3, reference -2 for both; β = 0.5.
# h = (-1 + 2) - (-3 + 2) = 2, so β·h = 1.
PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sigmoid_by_hand_with_and_without_label_smoothing():
    losses, chosen, rejected = get_loss("sigmoid")(PC, PR, RC, RR, beta=0.5)
    assert losses.item() == pytest.approx(softplus(-1.0))  # -log σ(1) = 0.3132617
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert (chosen.item(), rejected.item()) == (pytest.approx(0.5), pytest.approx(-0.5))
    smoothed, _, _ = get_loss("sigmoid")(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    # 0.9·(-log σ(1)) + 0.1·(-log σ(-1))
    assert smoothed.item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0))
    assert smoothed.item() == pytest.approx(0.4132617, abs=1e-6)


def test_ipo_by_hand():
    losses, _, _ = get_loss("ipo")(PC, PR, RC, RR, beta=0.5)
    assert losses.item() == pytest.approx((2 - 1 / (2 * 0.5)) ** 2)  # = 1
    losses, _, _ = get_loss("ipo")(PC, PR, RC, RR, beta=0.25)
    assert losses.item() == pytest.approx((2 - 2) ** 2, abs=1e-7)  # at its target margin


def test_esm_weighted_scales_the_sigmoid_loss_by_the_score_margin():
    w = esm_weights(torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.4, 0.5, 0.9]), floor=0.25)
    assert w.tolist() == pytest.approx([0.625, 0.25, 0.25])  # margin 0.5; 0; negative → 0
    losses, _, _ = get_loss("esm_weighted")(PC, PR, RC, RR, beta=0.5, weights=w[:1])
    assert losses.item() == pytest.approx(0.625 * softplus(-1.0))
    with pytest.raises(ValueError, match="weights"):
        get_loss("esm_weighted")(PC, PR, RC, RR, beta=0.5)
    with pytest.raises(ValueError, match="floor"):
        esm_weights(torch.tensor([1.0]), torch.tensor([0.0]), floor=1.5)


def test_unknown_loss_lists_the_valid_names():
    with pytest.raises(ValueError, match="sigmoid, ipo, esm_weighted"):
        get_loss("kto")
    assert set(LOSSES) == {"sigmoid", "ipo", "esm_weighted"}


def test_rewards_are_detached_and_loss_has_gradients():
    pc = PC.clone().requires_grad_()
    losses, chosen, _ = get_loss("sigmoid")(pc, PR, RC, RR, beta=0.5)
    assert not chosen.requires_grad
    losses.sum().backward()
    # d/dpc of -log σ(β h) = -β σ(-β h)
    assert pc.grad.item() == pytest.approx(-0.5 * (1 / (1 + math.e)))
