"""`ttpa-ray tiny-model` builds a loadable HF directory from the built-in catalog."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_tiny_model_cli_builds_loadable_dir(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "tiny-model",
            "--out",
            str(tmp_path / "m"),
            "--vocab-size",
            "1024",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttpa_ray.tools.catalog import load_builtin

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert len(tok) == 1024 == model.config.vocab_size
    tools = load_builtin().openai()[:3]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert all(t["function"]["name"] in text for t in tools)
    # the catalog's own words are in the vocabulary: tool names split into few tokens
    name = tools[0]["function"]["name"]
    assert len(tok(name)["input_ids"]) <= len(name) // 2
