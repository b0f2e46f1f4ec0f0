"""Pipeline resume: a run killed during TPS finishes on re-run without recomputing the
stages before it; `--from` re-runs a stage; bad stage names are clear errors."""

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


def cli(run: Path, *extra: str) -> list[str]:
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
def test_killed_during_tps_resumes_without_recomputing(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli(run, "--until", "sample"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if (run / "pipeline.json").exists() and state(run).get("sample", {}).get(
                "status"
            ) == "running":
                break
            assert proc.poll() is None, "the pipeline ended before TPS started"
            time.sleep(0.5)
        else:
            pytest.fail("TPS never started")
        time.sleep(3)  # inside the sample stage
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group (Ray workers too)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = state(run)
    assert before["sft"]["status"] == "done" and before["sample"]["status"] == "running"
    sft_weights = digest(run / "sft" / "model" / "model.safetensors")

    done = subprocess.run(
        cli(run, "--until", "sample"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    after = state(run)
    for name in ("construct", "model", "sft"):
        assert after[name]["status_this_run"] == "skipped", name
        assert after[name]["seconds"] == before[name]["seconds"]  # not recomputed
    assert after["sample"]["status"] == "done" and after["sample"]["status_this_run"] == "ran"
    assert digest(run / "sft" / "model" / "model.safetensors") == sft_weights
    assert "ttpa" not in after  # --until stopped there
    pairs = build_response_pairs(run / "sample", run / "construct", load_config(REDUCED))
    assert pairs and all(p["source"] == "response" and p["chosen_score"] == 1.0 for p in pairs)
    assert all(p["rejected_score"] < 1.0 for p in pairs)
    assert len({p["id"] for p in pairs}) == len(pairs)  # one per turn

    # --from re-runs that stage even though it is up to date
    again = subprocess.run(
        cli(run, "--from", "sample", "--until", "sample"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    final = state(run)
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
