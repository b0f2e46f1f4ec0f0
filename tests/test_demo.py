"""`ttpa-ray demo` (what `make demo` runs) works end to end, here on the reduced pipeline
config: every artifact present, row accounting consistent, the served endpoints queried
by eval, the report rendered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REDUCED = Path(__file__).resolve().parent / "pipeline" / "reduced.yaml"


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_demo_end_to_end(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "demo",
            "--config",
            str(REDUCED),
            "--out",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    demo = tmp_path / "demo"
    summary = json.loads((demo / "demo_summary.json").read_text())
    for cat, frac in summary["ast_valid"].items():
        ok, total = map(int, frac.split("/"))
        assert ok == total > 0, cat
    esm = summary["esm_mean_by_perturbation"]
    assert esm["exact"] == 1.0 and esm["bad_json"] == 0.0
    assert 1.0 > esm["case"] > esm["wrong_tool"] > 0.0  # ESM orders the error kinds

    run = demo / "run"
    stages = summary["pipeline"]
    assert [s for s, rec in stages.items() if rec["status"] != "done"] == []
    assert list(stages) == [
        "construct",
        "model",
        "sft",
        "sample",
        "ttpa",
        "dpo_response",
        "eval",
        "report",
    ]
    for name, rec in stages.items():
        if rec.get("rows_in") is not None:
            assert rec["rows_in"] == rec["rows_out"] + rec["rows_quarantined"], name
    for d in ("sft", "ttpa", "dpo_response"):
        assert (run / d / "model" / "model.safetensors").exists(), d
    assert (
        pq.read_metadata(run / "sample" / "pairs.parquet").num_rows == stages["sample"]["pairs"] > 0
    )
    response = pq.read_table(run / "dpo_response" / "pairs" / "pairs.parquet").to_pylist()
    assert response and {p["source"] for p in response} == {"response"}

    # every model was served and queried over HTTP
    models = set(summary["eval"]) - {"paired", "sampling"}
    assert models == {"sft", "dpo_response", "ttpa"}
    assert set(summary["eval"]["paired"]) >= {"ttpa-sft", "ttpa-dpo_response"}
    for model in models:
        res = pq.read_table(run / "eval" / model / "heldout" / "results.parquet").to_pylist()
        assert res and all(r["model"] == model for r in res)
        assert all(
            r["latency_ms"] > 0 for r in res if not r["error_type"].startswith("request_error")
        )
        assert not all(r["error_type"].startswith("request_error") for r in res)
        assert 0.0 <= summary["eval"][model]["esm"] <= 1.0
    html = (run / "report" / "index.html").read_text()
    assert "Headline" in html and html.count("<img") >= 4
    assert "report:" in out.stdout and "sft" in out.stdout
