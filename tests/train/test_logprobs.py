"""Shared-prefix packing is exact; the token-level mask cancels for DPO, not for IPO."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ttpa_ray.train.logprobs import branch_mask, concat_logps, reduce, shared_prefix_logps
from ttpa_ray.train.losses import get_loss


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights: outputs that differ per token, not near-uniform
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return m.float()


def left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(1, 97, (n,), generator=g).tolist()

    prompts = [rand(n) for n in (23, 9, 15)]
    # chosen and rejected share a prefix of 3, 0 and 5 tokens, then differ
    shared = [rand(3), [], rand(5)]
    chosen = [s + rand(n) for s, n in zip(shared, (6, 4, 2), strict=True)]
    rejected = [s + rand(n) for s, n in zip(shared, (2, 7, 3), strict=True)]
    for c, r, s in zip(chosen, rejected, shared, strict=True):
        r[len(s)] = (c[len(s)] % 96) + 1  # the first token after the prefix really differs
    return left_pad(prompts), right_pad(chosen), right_pad(rejected), torch.tensor([3, -1, 5])


def test_shared_prefix_equals_concatenated_forward(model):
    (p, pm), (c, cm), (r, rm), _ = batch()
    sc, sr = shared_prefix_logps(model, p, pm, c, cm, r, rm)
    rc, rr = concat_logps(model, p, pm, c, cm), concat_logps(model, p, pm, r, rm)
    assert sc.shape == c.shape and sr.shape == r.shape
    assert torch.allclose(sc, rc, atol=3e-5) and torch.allclose(sr, rr, atol=3e-5)
    assert (sc[cm == 0] == 0).all()
    # and the gradients agree: packing is exact, not an approximation
    model.zero_grad()
    (reduce(sc, cm).sum() - reduce(sr, rm).sum()).backward()
    packed = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    (
        reduce(concat_logps(model, p, pm, c, cm), cm).sum()
        - reduce(concat_logps(model, p, pm, r, rm), rm).sum()
    ).backward()
    for a, b in zip(packed, (q.grad for q in model.parameters()), strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    model.zero_grad()


def test_concat_handles_left_padding(model):
    (p, pm), (c, cm), _, _ = batch()
    alone = concat_logps(model, p[1:2, -9:], pm[1:2, -9:], c[1:2], cm[1:2])  # no padding
    assert torch.allclose(concat_logps(model, p, pm, c, cm)[1:2], alone, atol=3e-5)


def test_branch_mask():
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    out = branch_mask(mask, torch.tensor([2, -1, 6]))
    assert out.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]


def losses_with_and_without_mask(model, loss_type: str):
    (p, pm), (c, cm), (r, rm), branch = batch()
    with torch.no_grad():
        pc, pr = shared_prefix_logps(model, p, pm, c, cm, r, rm)
        torch.manual_seed(1)
        ref = LlamaForCausalLM(model.config)  # a different reference model
        rc, rr = shared_prefix_logps(ref, p, pm, c, cm, r, rm)
    average = loss_type == "ipo"
    out = []
    for masked in (True, False):
        mc = branch_mask(cm, branch) if masked else cm
        mr = branch_mask(rm, branch) if masked else rm
        losses, _, _ = get_loss(loss_type)(
            reduce(pc, mc, average),
            reduce(pr, mr, average),
            reduce(rc, mc, average),
            reduce(rr, mr, average),
            beta=0.1,
        )
        out.append(losses)
    return out


def test_token_level_mask_cancels_for_sigmoid_dpo(model):
    masked, unmasked = losses_with_and_without_mask(model, "sigmoid")
    # the shared prefix contributes equally to chosen and rejected, under both models
    assert torch.allclose(masked, unmasked, atol=1e-5)


def test_token_level_mask_changes_ipo(model):
    masked, unmasked = losses_with_and_without_mask(model, "ipo")
    assert masked[1] == pytest.approx(unmasked[1].item())  # no shared prefix: same
    assert not torch.allclose(masked[[0, 2]], unmasked[[0, 2]], atol=1e-4)
