"""Construction on real local Ray: outputs, accounting, resume, CLI (schema teacher)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ttpa_ray.config import ConstructConfig
from ttpa_ray.construct.stage import run_construct
from ttpa_ray.schema.io import read_rows


def cfg(**kw) -> ConstructConfig:
    base = {"n_episodes": 40, "shard_size": 10, "num_cpus": 0.5, "split": {"holdout_tools": 2}}
    return ConstructConfig.model_validate({**base, **kw})


def episodes(out) -> dict[str, list[dict]]:
    return {s: read_rows(out / "episodes" / f"{s}.parquet") for s in ("train", "val", "test")}


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_construct_outputs_and_resume(ray_local, tmp_path):
    # An interrupted run (2 of 4 shards done), then a re-run that finishes the rest.
    out = tmp_path / "resumed"
    partial = run_construct(cfg(), out, stop_after_shards=2, progress=False)
    assert partial == {"interrupted": True, "shards_run": 2, "shards_skipped": 0}
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("shards/*/_SUCCESS")}
    manifest = run_construct(cfg(), out, progress=False)
    assert (manifest["shards_run"], manifest["shards_skipped"]) == (2, 2)
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())  # not redone

    fresh = tmp_path / "fresh"
    run_construct(cfg(), fresh, progress=False)
    assert episodes(out) == episodes(fresh)  # same final output as an uninterrupted run

    stages = {s["stage"]: s for s in manifest["stages"]}
    total = stages["construct"]
    assert total["rows_in"] == 40 == total["rows_out"] + total["rows_quarantined"]
    assert sum(len(v) for v in episodes(out).values()) == total["rows_out"]
    assert len(read_rows(out / "quarantine.parquet")) == total["rows_quarantined"]
    for name in ("scene", "trajectory", "answer", "query"):
        s = stages[f"construct.{name}"]
        assert s["rows_in"] == s["rows_out"] + s["rows_quarantined"]
    held = set(manifest["holdout_tools"])
    assert len(held) == 2
    for split in ("train", "val"):
        for r in episodes(out)[split]:
            called = {c["function"]["name"] for m in r["messages"] for c in m["tool_calls"] or []}
            assert not called & held
    assert (out / "card.md").read_text().startswith("# Dataset card")
    assert (out / "card_stats.png").stat().st_size > 1000
    # the files are plain Parquet with the documented columns
    assert pq.read_schema(out / "episodes" / "train.parquet").names[:4] == [
        "id",
        "system",
        "tools",
        "messages",
    ]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_torn_markers_redo_their_shard_not_crash(ray_local, tmp_path, caplog):
    # `_SUCCESS` emptied and `counts.json` garbled (a crash under an older version, or a
    # hand edit): those shards are redone with a warning naming the file; the rest skipped.
    small = cfg(n_episodes=9, shard_size=3)
    out = tmp_path / "c"
    first = run_construct(small, out, progress=False)
    before = episodes(out)
    shards = sorted(out.glob("shards/shard-*"))
    assert len(shards) == 3
    torn, garbled = shards[0] / "_SUCCESS", shards[2] / "counts.json"
    torn.write_text("")
    garbled.write_text('[{"stage": "construct.scene", "rows_in"')
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        again = run_construct(small, out, progress=False)
    assert (again["shards_run"], again["shards_skipped"]) == (2, 1)
    assert str(torn) in caplog.text and str(garbled) in caplog.text
    assert json.loads(torn.read_text())["key"] == first["shard_key"]
    assert json.loads(garbled.read_text())[0]["stage"] == "construct.scene"
    assert episodes(out) == before

    def rows(manifest):  # the accounting, without timings
        return [{k: v for k, v in s.items() if k != "seconds"} for s in manifest["stages"]]

    assert rows(again) == rows(first)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_construct_and_export_cli(tmp_path):
    out = tmp_path / "c"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "construct",
            "--config",
            "configs/tiny-cpu.yaml",
            "--n",
            "12",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "dataset card" in run.stdout
    for fmt in ("openai-jsonl", "sharegpt"):
        target = tmp_path / f"{fmt}.jsonl"
        exp = subprocess.run(
            [
                sys.executable,
                "-m",
                "ttpa_ray.cli",
                "export",
                "--episodes",
                str(out / "episodes"),
                "--format",
                fmt,
                "--out",
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert exp.returncode == 0, exp.stderr[-2000:]
        lines = [json.loads(x) for x in target.read_text().splitlines()]
        assert (
            len(lines) == json.loads((out / "manifest.json").read_text())["stages"][0]["rows_out"]
        )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "construct",
            "--config",
            str(tmp_path / "nope.yaml"),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_bad_inputs_fail_in_the_driver_with_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "function", "function": {"name": "bad tool!", "parameters": {}}}]')
    with pytest.raises(ValueError, match=r"no valid tools: 1 invalid, e\.g\. tool 'bad tool!'"):
        run_construct(cfg(catalog=str(bad)), tmp_path / "a", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_construct(cfg(catalog=str(tmp_path / "missing.json")), tmp_path / "b", progress=False)
    hf = {"kind": "hf", "model": str(tmp_path / "no-model")}
    with pytest.raises(FileNotFoundError, match="teacher.model: model directory"):
        run_construct(cfg(teacher=hf), tmp_path / "c", progress=False)
    assert not (tmp_path / "a" / "shards").exists()  # nothing started
