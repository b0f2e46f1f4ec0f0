"""`ttpa-ray demo` (what `make demo` runs) works end to end on the CPU default."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_demo_end_to_end(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ttpa_ray.cli", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "this demo runs the stages that exist" in out.stdout
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    for cat, frac in summary["ast_valid"].items():
        ok, total = map(int, frac.split("/"))
        assert ok == total > 0, cat
    esm = summary["esm_mean_by_perturbation"]
    assert esm["exact"] == 1.0 and esm["bad_json"] == 0.0
    # ESM must order the error kinds: a case slip costs less than a wrong tool.
    assert 1.0 > esm["case"] > esm["wrong_tool"] > 0.0
    assert 1.0 > esm["drop_arg"] > 0.0
    quarantine = tmp_path / "demo" / "score" / "scored.quarantine.parquet"
    assert quarantine.exists()
    assert (tmp_path / "demo" / "tiny-model" / "config.json").exists()
    assert sum(summary["construct"]["splits"].values()) + summary["construct"]["quarantined"] == 200
    assert (tmp_path / "demo" / "construct" / "card.md").exists()
    assert (tmp_path / "demo" / "tools" / "bfcl" / "bfcl_entries.parquet").exists()
    sft = summary["sft"]
    assert sft["steps"] == 30 and sft["loss_last"] < sft["loss_first"]
    assert (tmp_path / "demo" / "sft" / "model" / "model.safetensors").exists()
    tps = summary["tps"]
    assert tps["pairs"] > 0 and tps["pairs_by_source"].get("branch", 0) > 0
    assert (tmp_path / "demo" / "sample" / "pairs.parquet").exists()
    assert (tmp_path / "demo" / "sample" / "export" / "trl.jsonl").exists()
    dpo = summary["dpo"]
    assert dpo["steps"] == 10 and dpo["loss_last"] < dpo["loss_first"]
