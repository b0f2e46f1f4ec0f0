"""`ttpa-ray demo` (what `make demo` runs) works end to end, here on the reduced pipeline
config with the opt-in GRPO stage switched on (two steps; one run covers both, to keep CI
short): every artifact present, row accounting consistent, the served endpoints (four
models) queried by eval, the report rendered with its GRPO section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REDUCED = Path(__file__).resolve().parent / "pipeline" / "reduced.yaml"


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_demo_end_to_end(tmp_path):
    data = yaml.safe_load(REDUCED.read_text())
    data["pipeline"]["grpo_enabled"] = True
    data["pipeline"]["grpo"] = {
        "max_steps": 2,
        "checkpoint_every": 2,
        "lr": 0.0005,
        "grpo": {"group_size": 2, "prompts_per_step": 2, "max_tokens": 32},
    }
    config = tmp_path / "reduced-grpo.yaml"
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "demo",
            "--config",
            str(config),
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
        "grpo",
        "eval",
        "report",
    ]
    for name, rec in stages.items():
        if rec.get("rows_in") is not None:
            assert rec["rows_in"] == rec["rows_out"] + rec["rows_quarantined"], name
    for d in ("sft", "ttpa", "dpo_response", "grpo"):
        assert (run / d / "model" / "model.safetensors").exists(), d
    assert len((run / "grpo" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (
        pq.read_metadata(run / "sample" / "pairs.parquet").num_rows == stages["sample"]["pairs"] > 0
    )
    response = pq.read_table(run / "dpo_response" / "pairs" / "pairs.parquet").to_pylist()
    assert response and {p["source"] for p in response} == {"response"}

    # every model was served and queried over HTTP
    models = set(summary["eval"]) - {"paired", "sampling"}
    assert models == {"sft", "dpo_response", "ttpa", "grpo"}
    assert set(summary["eval"]["paired"]) >= {
        "ttpa-sft",
        "ttpa-dpo_response",
        "grpo-sft",
        "grpo-ttpa",
    }
    assert summary["eval"]["paired"]["grpo-sft"]["n"] == summary["eval"]["grpo"]["n"] > 0
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
    grpo_section = html.split('<section id="grpo">', 1)[1].split("</section>", 1)[0]
    assert "not available" not in grpo_section and "<img" in grpo_section
    assert "report:" in out.stdout and "sft" in out.stdout and "grpo" in out.stdout
    assert "TTPA + baseline + GRPO" in out.stdout
