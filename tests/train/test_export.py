"""LoRA: export round trips (merged and adapter), and the adapter-disabled reference."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ttpa_ray.config import DPOConfig, TrainConfig
from ttpa_ray.train.data import collate_pairs
from ttpa_ray.train.export import export_model, lora_model
from ttpa_ray.train.logprobs import concat_logps
from ttpa_ray.train.objectives import AdapterDisabled, dpo_loss, precompute_reference

CFG = TrainConfig.model_validate(
    {
        "lora": {
            "enabled": True,
            "r": 4,
            "alpha": 8,
            "dropout": 0.0,
            "target_modules": ["q_proj", "v_proj", "up_proj"],
        }
    }
)


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model


def trained_lora(model_dir: Path):
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model = lora_model(base, CFG)
    torch.manual_seed(3)
    with torch.no_grad():  # as if trained: adapters that change the outputs
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    return model.eval()


def logps(model, ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return concat_logps(model, ids[:, :1], mask[:, :1], ids[:, 1:], mask[:, 1:])


IDS = torch.randint(9, 200, (2, 24), generator=torch.Generator().manual_seed(0))


def test_lora_exports_merged_and_as_adapter(model_dir, tmp_path):
    model = trained_lora(model_dir)
    expected = logps(model, IDS)
    base_only = logps(AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True), IDS)
    assert not torch.allclose(expected, base_only, atol=1e-3)  # the adapters matter

    merged = export_model(model.state_dict(), model_dir, CFG, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged, local_files_only=True)
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(logps(plain, IDS), expected, atol=1e-4)
    assert (merged / "chat_template.jinja").exists() and (merged / "tokenizer.json").exists()

    adapter_cfg = CFG.model_copy(update={"export": "adapter"})
    adapter = export_model(model.state_dict(), model_dir, adapter_cfg, tmp_path / "adapter")
    assert (adapter / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    assert torch.allclose(logps(loaded, IDS), expected, atol=1e-4)


def test_partial_state_dict_is_refused(model_dir, tmp_path):
    model = trained_lora(model_dir)
    state = dict(list(model.state_dict().items())[:5])
    with pytest.raises(ValueError, match="does not match"):
        export_model(state, model_dir, CFG, tmp_path / "x")


def test_adapter_disabled_reference_matches_the_precomputed_one(model_dir):
    from transformers import AutoTokenizer

    from ttpa_ray.train.data import PairExample

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    g = torch.Generator().manual_seed(1)
    examples = [
        PairExample(
            torch.randint(9, 200, (12,), generator=g).tolist(),
            torch.randint(9, 200, (5,), generator=g).tolist(),
            torch.randint(9, 200, (4,), generator=g).tolist(),
        )
        for _ in range(4)
    ]
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    precompute_reference(base, examples, tok.pad_token_id)
    policy = trained_lora(model_dir)  # LoRA leaves the base weights as they were
    batch = collate_pairs(examples, tok.pad_token_id)
    settings = DPOConfig(loss_type="sigmoid", beta=0.3)
    with torch.no_grad():
        pre, _ = dpo_loss(policy, batch, settings)
        live = {k: v for k, v in batch.items() if not k.startswith("ref_")}
        disabled, _ = dpo_loss(policy, live, settings, ref_model=AdapterDisabled(policy))
    assert pre.item() == pytest.approx(disabled.item(), abs=1e-5)
    assert copy.copy(CFG).dpo.reference == "precomputed"
    with pytest.raises(ValueError, match="needs lora.enabled"):
        TrainConfig.model_validate(
            {"lora": {"enabled": False}, "dpo": {"reference": "adapter_disabled"}}
        )


def test_lora_is_on_by_default_for_real_models_only(model_dir, tmp_path):
    from transformers import LlamaConfig

    from ttpa_ray.train.trainer import resolve_lora

    auto = TrainConfig()
    assert auto.lora.enabled is None
    assert resolve_lora(auto, model_dir).lora.enabled is False  # the tiny model: full training
    big = tmp_path / "big"
    LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12
    ).save_pretrained(big)  # ~200M parameters, config only: counted on the meta device
    assert resolve_lora(auto, big).lora.enabled is True
    off = TrainConfig.model_validate({"lora": {"enabled": False}})
    assert resolve_lora(off, big).lora.enabled is False  # an explicit choice stands
