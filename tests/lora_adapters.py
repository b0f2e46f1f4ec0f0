"""Test helper: LoRA adapters for the tiny model (the serve tests, hf and vllm backends)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (not zero) weights, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        model = get_peft_model(base, cfg)
    model.save_pretrained(out)
    return out
