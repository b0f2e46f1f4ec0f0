"""Export a trained policy as a plain Hugging Face directory (transformers and vLLM load it).

The state dict comes from the training engine, whole (under ZeRO-3 it is gathered on
rank 0 first, never one rank's shard). With LoRA it holds PEFT's keys: the adapter is
either merged into the base weights (`merged`) or saved alone (`adapter`, with the base
directory recorded in `adapter_config.json`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttpa_ray.config import TrainConfig

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def lora_model(model: Any, cfg: TrainConfig) -> Any:
    """`model` wrapped with the configured LoRA adapters (PEFT)."""
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def export_model(
    state_dict: dict[str, torch.Tensor], base_dir: str | Path, cfg: TrainConfig, out: str | Path
) -> Path:
    """Write the trained model (and the base tokenizer + chat template) to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model: Any = AutoModelForCausalLM.from_pretrained(
        base_dir, local_files_only=True, dtype=torch.float32
    )
    if cfg.lora.enabled:
        model = lora_model(model, cfg)
    state = {k: v.float() for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings may be stored once; anything else missing means a partial state dict.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"export: state dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if cfg.lora.enabled and cfg.export == "adapter":
        model.save_pretrained(out)  # adapter weights + adapter_config.json
    else:
        if cfg.lora.enabled:
            model = model.merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    tokenizer.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (Path(base_dir) / name).exists() and not (out / name).exists():
            shutil.copy(Path(base_dir) / name, out / name)
    return out
