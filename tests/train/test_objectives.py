"""SFT and DPO objectives on the tiny model: examples, learning, and reference log-probs."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from synthetic_pairs import perturbed_pair_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttpa_ray.config import DPOConfig
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.tools.catalog import load_builtin
from ttpa_ray.train.data import (
    IGNORE,
    SkipExample,
    collate_pairs,
    collate_sft,
    pair_example,
    sft_example,
    sft_turn_examples,
)
from ttpa_ray.train.losses import LOSSES, get_loss
from ttpa_ray.train.objectives import dpo_loss, precompute_reference, sft_loss

TOOLS = load_builtin().tools


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def fresh_model(model_dir: Path) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).train()


def test_sft_labels_cover_assistant_tokens_only(tokenizer):
    ep = build_episode(1, TOOLS).to_row()
    ex = sft_example(tokenizer, ep, max_len=100_000)
    assert not ex.fitted and len(ex.labels) == len(ex.input_ids)
    labelled = tokenizer.decode(
        [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE]
    )
    assert "<tool_call>" in labelled
    query = ep["messages"][0]["content"]
    assert query[:40] not in labelled  # the user turn carries no loss
    assert '"type": "function"' not in labelled  # nor the tools in the system turn
    answer = ep["messages"][-1]["content"]
    assert answer[:30] in labelled
    with pytest.raises(SkipExample, match="too_long"):  # never cut from the left
        sft_example(tokenizer, ep, max_len=300)
    with pytest.raises(SkipExample, match="no messages"):
        sft_example(tokenizer, {**ep, "messages": []}, 100)


def test_sft_lowers_the_loss(model_dir, tokenizer):
    model = fresh_model(model_dir)
    # three first turns, memorised: enough to fail on a broken loss, ~8 s on 2 cores
    rows = [build_episode(s, TOOLS).to_row() for s in range(3)]
    examples = [
        e
        for r in rows
        for e in sft_turn_examples(tokenizer, r, 2048, distractors=1, max_turns=1)[0]
    ]
    batch = collate_sft(examples, tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first, _ = sft_loss(model, batch)
    for _ in range(40):
        loss, metrics = sft_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["tokens"] > 50
    assert loss.item() < 0.6 * first.item(), (first.item(), loss.item())


def pairs(tokenizer, n: int) -> list:
    """Gold call (chosen) vs a perturbed call (rejected), token-level: `branch_token_index`
    is where their token ids first differ."""
    out = []
    for row in perturbed_pair_rows(n):
        c = tokenizer(row["chosen_text"], add_special_tokens=False)["input_ids"]
        r = tokenizer(row["rejected_text"], add_special_tokens=False)["input_ids"]
        branch = next(i for i, (a, b) in enumerate(zip(c + [-1], r + [-2], strict=False)) if a != b)
        out.append(pair_example(tokenizer, {**row, "branch_token_index": branch}, max_len=2048))
    return out


def test_pair_examples_share_tokens_before_the_branch(tokenizer):
    for ex in pairs(tokenizer, 8):
        b = ex.branch_token_index
        assert ex.chosen_ids[:b] == ex.rejected_ids[:b] and ex.chosen_ids[b] != ex.rejected_ids[b]
        assert ex.chosen_ids[-1] == tokenizer.eos_token_id
    ex = pairs(tokenizer, 1)[0]
    row = {
        "prompt": [{"role": "user", "content": "hi " * 400}],
        "tools": "[]",
        "chosen_text": "a",
        "rejected_text": "b",
    }
    with pytest.raises(SkipExample, match="too_long"):  # never cut from the left
        pair_example(tokenizer, row, max_len=64)
    with pytest.raises(SkipExample, match="does not fit"):
        pair_example(tokenizer, {**row, "chosen_text": "word " * 100}, max_len=64)
    with pytest.raises(SkipExample, match="empty prompt"):
        pair_example(tokenizer, {**row, "prompt": []}, max_len=64)
    assert ex.prompt_ids


def test_dpo_learns_the_pairs_with_precomputed_reference(model_dir, tokenizer):
    model = fresh_model(model_dir)
    examples = precompute_reference(
        copy.deepcopy(model), pairs(tokenizer, 6), tokenizer.pad_token_id
    )
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    settings = DPOConfig(loss_type="sigmoid", beta=0.5)
    loss0, m0 = dpo_loss(model, batch, settings)
    # policy == reference at the start: every log-ratio is 0 and the loss is ln 2
    assert loss0.item() == pytest.approx(math.log(2), abs=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15):
        loss, metrics = dpo_loss(model, batch, settings)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["rewards/accuracy"] > 0.9, metrics
    assert loss.item() < 0.5 * math.log(2)


def test_precomputed_reference_is_really_used(model_dir, tokenizer):
    reference = fresh_model(model_dir).eval()
    model = copy.deepcopy(reference).train()
    examples = precompute_reference(reference, pairs(tokenizer, 6), tokenizer.pad_token_id)
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    settings = DPOConfig(loss_type="ipo", beta=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(3):
        loss, _ = dpo_loss(model, batch, settings)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pre, _ = dpo_loss(model, batch, settings)
        live = {k: v for k, v in batch.items() if not k.startswith("ref_")}
        resident, _ = dpo_loss(model, live, settings, ref_model=reference)
        ignored = {
            **batch,
            "ref_chosen": torch.zeros_like(batch["ref_chosen"]),
            "ref_rejected": torch.zeros_like(batch["ref_rejected"]),
        }
        wrong, _ = dpo_loss(model, ignored, settings)
    assert pre.item() == pytest.approx(resident.item(), abs=1e-5)  # same as a resident reference
    assert abs(pre.item() - wrong.item()) > 1e-3  # and the values matter
    with pytest.raises(ValueError, match="no reference"):
        dpo_loss(model, live, settings)


def test_settings_validation():
    with pytest.raises(ValueError, match="valid: sigmoid"):
        get_loss("nope")
    with pytest.raises(ValueError, match="'sigmoid'"):
        DPOConfig(loss_type="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    # the config admits exactly the losses there are
    assert set(get_args(DPOConfig.model_fields["loss_type"].annotation)) == set(LOSSES)


def test_packed_sft_equals_padded_sft(model_dir, tokenizer):
    from ttpa_ray.train.data import SFTExample, pack_sft

    model = fresh_model(model_dir).eval()
    turns = [
        sft_turn_examples(tokenizer, build_episode(s, TOOLS).to_row(), 4096, distractors=1)[0][0]
        for s in range(6)
    ]
    # examples of assorted lengths (their ends: the label and some prompt before it)
    examples = [
        SFTExample(t.input_ids[-n:], t.labels[-n:])
        for t, n in zip(turns, (200, 90, 150, 60, 120, 40), strict=True)
    ]
    packed = pack_sft(examples, max_len=300)
    assert sum(p.n_examples for p in packed) == 6 and len(packed) < 6
    assert all(len(p.input_ids) <= 300 for p in packed)
    # no label at an example's first token: nothing is predicted across a boundary
    for p in packed:
        starts = [i for i, pos in enumerate(p.position_ids) if pos == 0]
        assert all(p.labels[i] == IGNORE for i in starts)
    with torch.no_grad():
        padded_loss, padded = sft_loss(model, collate_sft(examples, tokenizer.pad_token_id))
        packed_loss, packed_m = sft_loss(model, collate_sft(packed, tokenizer.pad_token_id))
    # the same labelled tokens (an example's first label never counts: padded, the shift
    # drops it; packed, it is IGNORE), each seeing only its own example
    assert packed_m["tokens"] == padded["tokens"]
    assert packed_loss.item() == pytest.approx(padded_loss.item(), abs=1e-4)
