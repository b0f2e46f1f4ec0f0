"""A run dir given as a URI (file:// here; s3:// and gs:// go through the same pyarrow
code): stages work in a local mirror and push when they finish, Ray Train keeps its
storage at the URI, and a second driver with an empty mirror resumes from the URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REDUCED = Path(__file__).resolve().parent / "reduced.yaml"


def pipeline(uri: str, cache: Path, until: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTPA_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "ttpa_ray.cli", "pipeline", "--config", str(REDUCED)]
    return subprocess.run(
        [*cmd, "--run-dir", uri, "--until", until],
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_uri_run_dir_pushes_stages_and_resumes_on_another_driver(tmp_path):
    bucket = tmp_path / "bucket" / "run"
    uri = f"file://{bucket}"
    first = pipeline(uri, tmp_path / "driver-a", "sft")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (bucket / "construct" / "episodes" / "train.parquet").is_file()
    assert (bucket / "sft" / "model" / "config.json").is_file()
    assert (bucket / "sft" / "metrics.jsonl").is_file()
    # Ray Train wrote its checkpoints to the URI itself (not mirrored by the driver)
    assert list((bucket / "sft" / "ray").rglob("checkpoint_*"))
    assert (bucket / "cluster" / "nodes.jsonl").is_file()

    second = pipeline(uri, tmp_path / "driver-b", "sample")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[3/8] sft: up to date, skipped" in second.stdout
    state = {s["name"]: s for s in json.loads((bucket / "pipeline.json").read_text())["stages"]}
    assert state["sample"]["status"] == "done" and state["sample"]["status_this_run"] == "ran"
    assert state["sft"]["status_this_run"] == "skipped"
    assert (bucket / "sample" / "pairs.parquet").is_file()
    # the second driver fetched only what TPS reads (construct, sft), never the base model
    mirror = next((tmp_path / "driver-b" / "runs").iterdir())
    assert (mirror / "sft" / "model").is_dir() and (mirror / "construct").is_dir()
    assert not (mirror / "model").exists()
    # the sampler actors loaded the policy from the URI through the per-node cache
    cached = [p for p in (tmp_path / "driver-b").glob("*-model") if (p / "config.json").exists()]
    assert cached, sorted(p.name for p in (tmp_path / "driver-b").iterdir())
