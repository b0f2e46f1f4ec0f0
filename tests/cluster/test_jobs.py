"""`ray job submit` against a real local Ray head (loopback, free ports, own temp dir):
the reduced pipeline ends SUCCEEDED with its artifacts; a bad config ends FAILED with
the clear error in the job's logs. The head is stopped by its process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttpa_ray.cluster.head import LocalHead, ray_bin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2).start()
    try:
        yield h
    finally:
        h.stop()


def ray_job(head: LocalHead, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **head.client_env()}
    return subprocess.run(
        [ray_bin(), "job", args[0], "--address", head.dashboard_url, *args[1:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(head: LocalHead, *entrypoint: str) -> str:
    out = ray_job(
        head,
        "submit",
        "--no-wait",
        "--working-dir",
        ".",
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        *entrypoint,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for word in (out.stdout + out.stderr).split():
        word = word.strip("'\".,")
        if word.startswith("raysubmit_"):
            return word
    raise AssertionError(f"no submission id in: {out.stdout[-1000:]}")


def wait(head: LocalHead, job: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        out = ray_job(head, "status", job)
        for state in ("SUCCEEDED", "FAILED", "STOPPED"):
            if f"status: {state}" in out.stdout or f"'{job}' {state.lower()}" in out.stdout:
                return state
            if state in out.stdout.split():
                status = state
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(3)
    ray_job(head, "stop", job)
    logs = ray_job(head, "logs", job).stdout
    raise AssertionError(f"job {job} not finished in {timeout_s:.0f}s:\n{logs[-3000:]}")


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_pipeline_job_succeeds_with_artifacts(head, tmp_path):
    run = tmp_path / "run"
    job = submit(
        head,
        "python",
        "-m",
        "jobs.pipeline",
        "--config",
        "tests/pipeline/reduced.yaml",
        "--run-dir",
        str(run),
        "--no-progress",
    )
    state = wait(head, job, timeout_s=780)
    logs = ray_job(head, "logs", job).stdout
    assert state == "SUCCEEDED", logs[-4000:]
    assert f"connected to {head.host}" in logs or "connected to auto" in logs
    stages = {s["name"]: s for s in json.loads((run / "pipeline.json").read_text())["stages"]}
    assert all(s["status"] == "done" for s in stages.values()), stages
    assert len(stages) == 8
    assert (run / "sample" / "pairs.parquet").is_file()
    assert (run / "ttpa" / "model" / "config.json").is_file()
    assert (run / "eval" / "summary.json").is_file()
    assert (run / "report" / "index.html").is_file()
    # the driver sampled the cluster while it ran: one node, tagged with every stage
    samples = [json.loads(x) for x in (run / "cluster" / "nodes.jsonl").read_text().splitlines()]
    assert {s["nodes"] for s in samples} == {1}
    assert {s["stage"] for s in samples} >= {"construct", "sft", "sample", "eval"}


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_bad_config_path_fails_with_a_clear_error(head, tmp_path):
    job = submit(
        head,
        "python",
        "-m",
        "jobs.pipeline",
        "--config",
        "configs/does-not-exist.yaml",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert wait(head, job, timeout_s=180) == "FAILED"
    logs = ray_job(head, "logs", job).stdout
    assert "ttpa-ray job error: config file configs/does-not-exist.yaml does not exist" in logs
    assert not (tmp_path / "run").exists()


def test_job_help_runs_without_a_cluster():
    out = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--stage {sft,ttpa,dpo_response}" in out.stdout
