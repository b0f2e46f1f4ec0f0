"""Pipeline resume: a run killed during TPS finishes on re-run — on another driver, from
its URI run dir — without recomputing the stages before it; `--from` re-runs a stage; bad
stage names are clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttpa_ray.config import load_config
from ttpa_ray.pipeline import STAGES, Pipeline, build_response_pairs

REDUCED = Path(__file__).resolve().parent / "reduced.yaml"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(run: Path) -> dict:
    data = json.loads((run / "pipeline.json").read_text())
    return {s["name"]: s for s in data["stages"]}


def cli(run: Path | str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ttpa_ray.cli",
        "pipeline",
        "--config",
        str(REDUCED),
        "--run-dir",
        str(run),
        *extra,
    ]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_killed_during_tps_resumes_on_another_driver_without_recomputing(tmp_path):
    """One run covers both resume paths (one pipeline run fewer in CI): the run dir is a
    URI (file:// here; s3:// and gs:// go through the same pyarrow code), driver A is
    killed during TPS, and driver B, with an empty local mirror, resumes from the URI
    without recomputing the stages A finished and pushed."""
    bucket = tmp_path / "bucket" / "run"
    uri = f"file://{bucket}"
    cache_a, cache_b = tmp_path / "driver-a", tmp_path / "driver-b"
    proc = subprocess.Popen(
        cli(uri, "--until", "sample"),
        env={**os.environ, "TTPA_CACHE_DIR": str(cache_a)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            # SFT's push is the last thing before TPS (the mirror's pipeline.json is no
            # signal: TPS's pull of its inputs brings the URI's over it)
            if (bucket / "pipeline.json").exists() and state(bucket).get("sft", {}).get(
                "status"
            ) == "done":
                break
            assert proc.poll() is None, "the pipeline ended before TPS started"
            time.sleep(0.5)
        else:
            pytest.fail("TPS never started")
        time.sleep(3)  # inside the sample stage (~10 s alone on 2 cores)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group (Ray workers too)
        assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # what A pushed: every finished stage, Ray Train's checkpoints written to the URI itself
    before = state(bucket)
    assert before["sft"]["status"] == "done" and "sample" not in before  # killed in TPS
    assert (bucket / "construct" / "episodes" / "train.parquet").is_file()
    assert (bucket / "sft" / "model" / "config.json").is_file()
    assert (bucket / "sft" / "metrics.jsonl").is_file()
    assert list((bucket / "sft" / "ray").rglob("checkpoint_*"))
    assert (bucket / "cluster" / "nodes.jsonl").is_file()
    sft_weights = digest(bucket / "sft" / "model" / "model.safetensors")

    env_b = {**os.environ, "TTPA_CACHE_DIR": str(cache_b)}
    done = subprocess.run(
        cli(uri, "--until", "sample"), env=env_b, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[3/8] sft: up to date, skipped" in done.stdout
    after = state(bucket)
    for name in ("construct", "model", "sft"):
        assert after[name]["status_this_run"] == "skipped", name
        assert after[name]["seconds"] == before[name]["seconds"]  # not recomputed
    assert after["sample"]["status"] == "done" and after["sample"]["status_this_run"] == "ran"
    assert digest(bucket / "sft" / "model" / "model.safetensors") == sft_weights
    assert "ttpa" not in after  # --until stopped there
    # B fetched only what TPS reads (construct, sft), never the base model, and the
    # sampler actors loaded the policy from the URI through the per-node cache
    mirror = next((cache_b / "runs").iterdir())  # B's local mirror of the URI run dir
    assert (mirror / "sft" / "model").is_dir() and (mirror / "construct").is_dir()
    assert not (mirror / "model").exists()
    cached = [p for p in cache_b.glob("*-model") if (p / "config.json").exists()]
    assert cached, sorted(p.name for p in cache_b.iterdir())
    pairs = build_response_pairs(bucket / "sample", bucket / "construct", load_config(REDUCED))
    assert pairs and all(p["source"] == "response" and p["chosen_score"] == 1.0 for p in pairs)
    assert all(p["rejected_score"] < 1.0 for p in pairs)
    assert len({p["id"] for p in pairs}) == len(pairs)  # one per turn

    # --from re-runs that stage even though it is up to date
    again = subprocess.run(
        cli(uri, "--from", "sample", "--until", "sample"),
        env=env_b,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    final = state(bucket)
    assert (
        final["sample"]["status_this_run"] == "ran" and final["sft"]["status_this_run"] == "skipped"
    )


def test_keys_follow_settings_and_inputs(tmp_path):
    cfg = load_config(REDUCED)
    a = Pipeline(cfg, tmp_path)
    changed = cfg.model_copy(deep=True)
    changed.pipeline.sft["max_steps"] = 99
    b = Pipeline(changed, tmp_path)
    assert a.key("construct") == b.key("construct")
    for stage in ("sft", "sample", "ttpa", "eval", "report"):  # SFT and everything downstream
        assert a.key(stage) != b.key(stage), stage
    assert a.train_cfg("dpo_response").dpo.token_level is False
    assert a.train_cfg("ttpa").max_steps == 4
    with pytest.raises(ValueError, match="unknown stage"):
        a.run_all(start="nope")
    assert STAGES[0] == "construct" and STAGES[-1] == "report"


def test_a_stage_rerun_under_a_new_key_starts_fresh(tmp_path):
    """Checkpoints of a run with other settings are not resumed (Ray Train would pick up
    its latest checkpoint); a stage stopped under the same key keeps them."""
    pipe = Pipeline(load_config(REDUCED), tmp_path)
    ckpt = tmp_path / "sft" / "ray" / "checkpoint_000900"
    ckpt.mkdir(parents=True)
    pipe.state["stages"]["sft"] = {"status": "running", "key": pipe.key("sft")}
    pipe._fresh("sft")
    assert ckpt.exists()  # same settings: resume
    pipe.state["stages"]["sft"] = {"status": "done", "key": "an-older-key"}
    pipe._fresh("sft")
    assert not (tmp_path / "sft").exists()


def test_a_typo_in_a_training_override_fails_at_load_naming_its_path(tmp_path):
    """`pipeline.<which>` overrides are validated as `train` is when the config loads, not
    when their stage starts; a valid override reaches that stage's train config."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  ttpa:\n    dpo:\n      betaa: 0.2\n")
    with pytest.raises(ValueError, match=r"pipeline\.ttpa\.dpo\.betaa: Extra inputs"):
        load_config(bad)
    bad.write_text("pipeline:\n  sft:\n    workers: -1\n")
    with pytest.raises(ValueError, match=r"pipeline\.sft\.workers"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "train:\n  dpo:\n    beta: 0.1\npipeline:\n  ttpa:\n    dpo:\n      beta: 0.3\n"
    )
    cfg = load_config(good)
    assert cfg.train_for("ttpa").dpo.beta == 0.3 and cfg.train_for("sft").dpo.beta == 0.1
