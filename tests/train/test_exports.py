"""Exports that load elsewhere: no local path in what others read, our parser on our tokenizers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from ttpa_ray.config import TrainConfig
from ttpa_ray.schema.tool_call_text import render_tool_calls
from ttpa_ray.train.export import EXPORT_INFO, export_model, lora_model, portable_base_name
from ttpa_ray.train.tiny import RESPONSE_TEMPLATE

LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}
CFG = TrainConfig.model_validate({"lora": LORA, "export": "adapter"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model) -> Path:
    # a copy under another name: the exports record the base by its directory name
    out = tmp_path_factory.mktemp("bases") / "tiny-base"
    shutil.copytree(tiny_model, out)
    return out


def trained(model_dir: Path):
    model = lora_model(AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True), CFG)
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: adapters that change the outputs
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    return model.eval()


def files_naming(directory: Path, needle: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if needle.encode() in p.read_bytes())


def test_adapter_names_its_base_portably_and_still_loads(model_dir, tmp_path):
    model = trained(model_dir)
    out = export_model(model.state_dict(), model_dir, CFG, tmp_path / "adapter")
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "tiny-base"
    # the local path is only in our own metadata (not in adapter_config.json or README.md)
    assert files_naming(out, str(model_dir.resolve())) == [EXPORT_INFO]
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info == {
        "base_model": "tiny-base",
        "base_model_path": str(model_dir.resolve()),
        "export": "adapter",
    }
    base = AutoModelForCausalLM.from_pretrained(info["base_model_path"], local_files_only=True)
    loaded = PeftModel.from_pretrained(base, out).eval()
    ids = torch.randint(9, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)


def test_merged_export_holds_no_local_path(model_dir, tmp_path):
    cfg = CFG.model_copy(update={"export": "merged"})
    out = export_model(trained(model_dir).state_dict(), model_dir, cfg, tmp_path / "merged")
    assert files_naming(out, str(model_dir.resolve())) == [EXPORT_INFO]
    assert json.loads((out / EXPORT_INFO).read_text())["export"] == "merged"


def test_portable_base_name(tmp_path):
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert portable_base_name(snapshot) == "Qwen/Qwen2.5-0.5B-Instruct"
    recorded = tmp_path / "copy"
    LlamaConfig(name_or_path="meta-llama/Llama-3.2-1B").save_pretrained(recorded)
    config = json.loads((recorded / "config.json").read_text())
    config["_name_or_path"] = "meta-llama/Llama-3.2-1B"  # transformers 4.x writes it
    (recorded / "config.json").write_text(json.dumps(config))
    assert portable_base_name(recorded) == "meta-llama/Llama-3.2-1B"
    config["_name_or_path"] = str(snapshot)  # a local path is not a name
    (recorded / "config.json").write_text(json.dumps(config))
    assert portable_base_name(recorded) == "copy"
    assert not os.path.isabs(portable_base_name(tmp_path / "nothing-here"))


def _tokenizer_config(directory: Path) -> dict:
    return json.loads((directory / "tokenizer_config.json").read_text())


def test_exported_tokenizer_parses_our_calls(model_dir, tmp_path):
    calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    out = export_model(trained(model_dir).state_dict(), model_dir, CFG, tmp_path / "adapter")
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    message = tok.parse_response(render_tool_calls(calls), prefix="")
    assert [c["function"] for c in message["tool_calls"]] == calls


def test_response_template_added_to_our_template_only(model_dir, tmp_path):
    # a base with our chat template but no response_template (made before we shipped one)
    ours = tmp_path / "ours-base"
    AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).save_pretrained(ours)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tok.save_pretrained(ours)
    config = _tokenizer_config(ours)
    del config["response_template"]
    (ours / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(ours, local_files_only=True).response_template is None
    cfg = CFG.model_copy(update={"lora": CFG.lora.model_copy(update={"enabled": False})})
    state = AutoModelForCausalLM.from_pretrained(ours, local_files_only=True).state_dict()
    out = export_model(state, ours, cfg, tmp_path / "out-ours")
    assert _tokenizer_config(out)["response_template"] == RESPONSE_TEMPLATE
    assert json.loads((out / EXPORT_INFO).read_text())["export"] == "full"

    # a model's own chat template: left without our parser
    foreign = tmp_path / "foreign-base"
    AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).save_pretrained(foreign)
    tok = AutoTokenizer.from_pretrained(ours, local_files_only=True)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(foreign)
    out = export_model(state, foreign, cfg, tmp_path / "out-foreign")
    assert "response_template" not in _tokenizer_config(out)
