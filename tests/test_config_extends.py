"""`extends:` in a YAML config: a file merged over the one it names, key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttpa_ray.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_tiny_cpu_vllm_is_tiny_cpu_with_vllm_engines():
    base, vllm = load_config(CONFIGS / "tiny-cpu.yaml"), load_config(CONFIGS / "tiny-cpu-vllm.yaml")
    assert (vllm.sample.engine, vllm.sample.vllm_device) == ("vllm", "cpu")
    assert (vllm.serve.backend, vllm.serve.vllm_device) == ("vllm", "cpu")
    # everything else is tiny-cpu's, nested keys included
    assert vllm.sample.branch == base.sample.branch and vllm.sample.n == base.sample.n
    assert vllm.serve.port == base.serve.port and vllm.pipeline == base.pipeline
    assert vllm.construct == base.construct and vllm.train == base.train


def test_merge_is_key_by_key_and_lists_replace(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "sample: {n: 3, branch: {top_k: 2, lowest_k: 2}}\npipeline: {eval_suites: [heldout]}\n"
    )
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nsample: {branch: {top_k: 4}}\n")
    (tmp_path / "top.yaml").write_text(
        "extends: mid.yaml\npipeline: {eval_suites: ['bfcl:simple_python']}\n"
    )
    cfg = load_config(tmp_path / "top.yaml")
    assert cfg.sample.n == 3 and cfg.sample.branch.top_k == 4 and cfg.sample.branch.lowest_k == 2
    assert cfg.pipeline.eval_suites == ["bfcl:simple_python"]


def test_a_cycle_a_missing_base_and_a_bad_value_are_clear_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="`extends` cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ValueError, match="extends: expected a file path"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: base-ok.yaml\nsample: {nn: 1}\n")
    (tmp_path / "base-ok.yaml").write_text("sample: {n: 2}\n")
    with pytest.raises(ValueError, match=r"e.yaml: invalid config:\n  sample.nn"):
        load_config(tmp_path / "e.yaml")
