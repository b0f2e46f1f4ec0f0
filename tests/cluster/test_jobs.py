"""`ray job submit` against real local Ray heads (loopback, free ports, own temp dirs,
stopped by their process groups): the reduced pipeline on an autoscaling head (Ray's
fake multi-node provider) ends SUCCEEDED with its artifacts, a worker node added for TPS
and removed after; a bad config ends FAILED with the clear error in the job's logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ttpa_ray.cluster.fake import FakeAutoscalingCluster
from ttpa_ray.cluster.head import LocalHead, free_ports, ray_bin
from ttpa_ray.report import build_report

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2).start()
    try:
        yield h
    finally:
        h.stop()


Head = LocalHead | FakeAutoscalingCluster


def ray_job(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **head.client_env()}
    return subprocess.run(
        [ray_bin(), "job", args[0], "--address", head.dashboard_url, *args[1:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(head: Head, *entrypoint: str) -> str:
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


def wait(head: Head, job: str, timeout_s: float) -> str:
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


IDLE_S = 10.0


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_pipeline_job_autoscales_a_worker_for_tps(tmp_path):
    """The reduced pipeline as a job on an autoscaling head, through TPS: the sampler actors
    need a `tps_worker` resource only the (min 0) worker group has, so the autoscaler adds
    a node for that stage and removes it once idle; the driver's timeline and the report
    show it. (The stages after TPS run no differently on this cluster; the report is built
    from the partial run.)"""
    cfg = yaml.safe_load((REPO / "tests" / "pipeline" / "reduced.yaml").read_text())
    cfg["sample"]["resources"] = {"tps_worker": 1}
    # training pinned to the head (a custom resource only it has): once TPS is done the
    # worker has nothing to run, whatever Ray's scheduler would otherwise pack onto it
    cfg["train"]["resources_per_worker"] = {"train_slot": 1}
    config = tmp_path / "autoscale.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 2, "train_slot": 1},
        worker_types={
            "tps": {"resources": {"CPU": 1, "tps_worker": 1}, "min_workers": 0, "max_workers": 1}
        },
        idle_timeout_s=IDLE_S,
    )
    with cluster:
        job = submit(
            cluster,
            "python",
            "-m",
            "jobs.pipeline",
            "--config",
            str(config),
            "--run-dir",
            str(run),
            "--until",
            "sample",
            "--no-progress",
        )
        state = wait(cluster, job, timeout_s=780)
        logs = ray_job(cluster, "logs", job).stdout
        assert state == "SUCCEEDED", logs[-4000:]
        assert "ray: connected to" in logs and "run dir:" in logs
        cluster.wait_for_nodes(1, timeout_s=60)  # the worker is gone again

    stages = {s["name"]: s for s in json.loads((run / "pipeline.json").read_text())["stages"]}
    assert list(stages) == ["construct", "model", "sft", "sample"], stages
    assert all(s["status"] == "done" for s in stages.values()), stages
    assert (run / "sample" / "pairs.parquet").is_file()
    samples = [json.loads(x) for x in (run / "cluster" / "nodes.jsonl").read_text().splitlines()]
    by_stage: dict[str, list[int]] = {}
    for s in samples:
        by_stage.setdefault(s["stage"], []).append(s["nodes"])
    # one node until TPS needs the worker group; two while it runs (the driver's timeline
    # ends with the run, right after TPS: the worker's removal once idle is what
    # `wait_for_nodes(1)` above saw)
    assert max(by_stage["construct"] + by_stage["sft"]) == 1, by_stage
    assert max(by_stage["sample"]) == 2, by_stage
    report = build_report(run).read_text()
    section = report.split('<section id="cluster">')[1].split("</section>")[0]
    assert "between 1 and 2" in section and "<img" in section


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


def test_job_user_errors_are_one_line_before_any_cluster(tmp_path):
    """Jobs report user errors as `ttpa-ray` does (one line, exit 2), and `jobs.serve`
    validates its settings as the CLI does, before connecting to Ray."""
    config = tmp_path / "c.yaml"
    config.write_text("serve:\n  port: 8123\n")

    def job(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = job("jobs.serve", "--config", str(tmp_path / "nope.yaml"), "--model", "m")
    assert missing.returncode == 2, missing.stderr
    nope = tmp_path / "nope.yaml"
    assert missing.stderr.strip() == f"ttpa-ray job error: config file {nope} does not exist"
    bad = job("jobs.serve", "--config", str(config), "--model", str(tmp_path), "--lora", "a:b=/x")
    assert bad.returncode == 2 and "ray: connected" not in bad.stdout, bad.stderr
    assert bad.stderr.strip() == (
        "ttpa-ray job error: invalid serve settings: adapter name 'a:b': must be non-empty "
        "without ':'"
    )
    usage = job("jobs.train", "--config", str(config), "--stage", "x")
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1, usage.stderr


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_serve_job_keeps_serving_and_eval_job_scores_the_endpoint(head, tmp_path, tiny_model):
    """`jobs.serve` deploys the app and ends; the app answers afterwards; `jobs.eval
    --endpoint` evaluates it over HTTP from another job."""
    model = tiny_model
    port = free_ports(1)[0]
    cfg = yaml.safe_load((REPO / "tests" / "pipeline" / "reduced.yaml").read_text())
    cfg["serve"] = {"port": port, "num_cpus": 0.25, "default_max_tokens": 16}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))

    job = submit(
        head,
        "python",
        "-m",
        "jobs.serve",
        "--config",
        str(config),
        "--model",
        str(model),
        "--name",
        "tiny",
    )
    assert wait(head, job, timeout_s=240) == "SUCCEEDED", ray_job(head, "logs", job).stdout
    assert f"at http://127.0.0.1:{port}/v1" in ray_job(head, "logs", job).stdout

    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"

    out = tmp_path / "eval"
    job = submit(
        head,
        "python",
        "-m",
        "jobs.eval",
        "--config",
        str(config),
        "--endpoint",
        f"http://127.0.0.1:{port}/v1",
        "--model",
        "tiny",
        "--suite",
        "bfcl:simple_python",
        "--limit",
        "3",
        "--out",
        str(out),
        "--no-progress",
    )
    assert wait(head, job, timeout_s=240) == "SUCCEEDED", ray_job(head, "logs", job).stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["request_errors"] == 0, metrics


def test_stage_jobs_bring_a_run_dir_up_to_date_through_their_stage(tmp_path):
    """Without RAY_ADDRESS a job runs on a local loopback Ray: `jobs.construct` runs one
    stage; `jobs.train --stage sft` then runs the stages SFT needs (model) and SFT."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = tmp_path / "run"
    # the reduced pipeline, smaller still: this checks which stages each job runs, not
    # what they learn
    config = tmp_path / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extends": str(REPO / "tests" / "pipeline" / "reduced.yaml"),
                "construct": {"n_episodes": 20, "shard_size": 20},
                "train": {"micro_batch_size": 2},
                "pipeline": {"sft": {"max_steps": 2, "checkpoint_every": 2}},
            }
        )
    )

    def job(*args: str) -> dict:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                *args,
                "--config",
                str(config),
                "--run-dir",
                str(run),
                "--no-progress",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        data = json.loads((run / "pipeline.json").read_text())
        return {s["name"]: s.get("status_this_run") for s in data["stages"]}

    assert job("jobs.construct") == {"construct": "ran"}
    ran = job("jobs.train", "--stage", "sft")
    assert ran == {"construct": "skipped", "model": "ran", "sft": "ran"}
    assert (run / "sft" / "model" / "config.json").is_file()
