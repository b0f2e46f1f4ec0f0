"""Export a trained policy as a plain Hugging Face directory (transformers and vLLM load it).

The state dict comes from the training engine, whole (under ZeRO-3 it is gathered on
rank 0 first, never one rank's shard). With LoRA it holds PEFT's keys: the adapter is
either merged into the base weights (`merged`) or saved alone (`adapter`). Files written
elsewhere name the base portably (`portable_base_name`: `adapter_config.json`'s
`base_model_name_or_path`, the model card); its local path is in `ttpa_ray.json`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttpa_ray.atomic import write_json_atomic
from ttpa_ray.config import TrainConfig
from ttpa_ray.train.tiny import RESPONSE_TEMPLATE, TEMPLATES, chat_template

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


EXPORT_INFO = "ttpa_ray.json"  # beside the exported model: the base's local path
# A snapshot in the Hugging Face cache: .../models--{org}--{name}/snapshots/{revision}
_HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def portable_base_name(base_dir: str | Path) -> str:
    """The base model's name as another machine can read it, never a local path.

    The Hub id of a Hugging Face cache snapshot (`org/name`), else a Hub id recorded in
    the base's `config.json` (`_name_or_path`, when it is not a local path), else the
    directory's name.
    """
    path = Path(base_dir).resolve()
    cached = _HF_CACHE_SNAPSHOT.search(path.as_posix())
    if cached:
        return f"{cached['org']}/{cached['name']}"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    recorded = config.get("_name_or_path") if isinstance(config, dict) else None
    if isinstance(recorded, str) and _HUB_ID.fullmatch(recorded) and not Path(recorded).exists():
        return recorded
    return path.name


def _add_response_template(tokenizer: Any) -> None:
    """Give a tokenizer with our chat template our `RESPONSE_TEMPLATE` if it has none
    (a model's own template, and its parser if any, are left alone)."""
    ours = {chat_template(name) for name in TEMPLATES}
    if getattr(tokenizer, "response_template", None) is None and tokenizer.chat_template in ours:
        tokenizer.response_template = RESPONSE_TEMPLATE


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
    """Write the trained model (and the base tokenizer + chat template) to `out`, with
    `ttpa_ray.json`: `{"base_model": portable name, "base_model_path": local path,
    "export": "adapter" | "merged" | "full"}`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = Path(base_dir).resolve()
    base_name = portable_base_name(base_path)
    model: Any = AutoModelForCausalLM.from_pretrained(
        base_dir, local_files_only=True, dtype=torch.float32
    )
    # PEFT copies the base's name_or_path into adapter_config.json and README.md, where a
    # path on this machine names nothing; loaders pass the base model explicitly anyway.
    model.name_or_path = model.config.name_or_path = base_name
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
    kind = ("adapter" if cfg.export == "adapter" else "merged") if cfg.lora.enabled else "full"
    if kind == "adapter":
        # The vocabulary is the base's (same shapes, or load_state_dict failed): no need for
        # PEFT's "auto" check, which looks the base name up (on the Hub, for a Hub id).
        model.save_pretrained(out, save_embedding_layers=False)  # + adapter_config.json
    else:
        if cfg.lora.enabled:
            model = model.merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    _add_response_template(tokenizer)
    tokenizer.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (base_path / name).exists() and not (out / name).exists():
            shutil.copy(base_path / name, out / name)
    info = {"base_model": base_name, "base_model_path": str(base_path), "export": kind}
    write_json_atomic(out / EXPORT_INFO, info, indent=2)
    return out
