"""The report of a run with the grpo stage: the GRPO section (from a hand-written
`grpo/metrics.jsonl`), absent without the stage; grpo as the headline's fourth model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ttpa_ray.report import build_report, headline

pytestmark = pytest.mark.timeout(120)

IMG_ALT = re.compile(r'<img class="plot" src="data:image/png;base64,[A-Za-z0-9+/=]*" alt="([^"]*)"')
SERIES = ("reward", "reward/esm", "reward/name", "reward/key", "reward/value")
PANEL_SERIES = ("zero_var_groups", "kl", "clip_frac")


def _record(step: int) -> dict[str, float | int]:
    """A GRPO step as the training loop writes it: rewards rising with the step."""
    return {
        "step": step,
        "reward": 0.1 + 0.04 * step,
        "reward/esm": 0.2 + 0.03 * step,
        "reward/name": 0.5 + 0.02 * step,
        "reward/key": 0.3 + 0.02 * step,
        "reward/value": 0.05 * step,
        "exact": 0.02 * step,
        "parse_rate": 0.9,
        "kl": 0.001 * step,
        "clip_frac": 0.05,
        "zero_var_groups": 0.5 - 0.02 * step,
        "rollout_tokens": 2048,
        "rollout_tokens_per_s": 400.0,
        "loss": 0.1,
        "lr": 1e-4,
    }


def _with_grpo(full_run: Path, dst: Path, records: list[dict] | None) -> Path:
    """`full_run` with a done grpo stage in pipeline.json and (unless None) its metrics."""
    run = dst / "run"
    shutil.copytree(full_run, run)
    state = json.loads((run / "pipeline.json").read_text())
    at = [s["name"] for s in state["stages"]].index("eval")
    state["stages"].insert(at, {"name": "grpo", "status": "done", "seconds": 9.0, "steps": 10})
    (run / "pipeline.json").write_text(json.dumps(state))
    if records is not None:
        (run / "grpo").mkdir()
        (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _section(html: str, sid: str) -> str:
    return html.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def test_grpo_section_plots_each_series(full_run: Path, tmp_path: Path) -> None:
    # written out of step order, as a resumed run may append
    records = [_record(s) for s in (6, 7, 8, 9, 10, 1, 2, 3, 4, 5)]
    html = build_report(_with_grpo(full_run, tmp_path, records)).read_text()
    assert '<a href="#grpo">' in html and "<h2>GRPO: online reward, KL and clipping</h2>" in html
    sec = _section(html, "grpo")
    alts = IMG_ALT.findall(sec)
    assert len(alts) == 2  # reward + zero-variance share; KL + clip fraction
    drawn = ", ".join(alts)
    for key in (*SERIES, *PANEL_SERIES):
        assert re.search(rf"(of |, ){re.escape(key)}(,|$)", drawn), key
    # first and last 20% of the steps (2 of 10), after sorting by step
    assert "<td>reward, first 20% of steps</td><td>0.160</td>" in sec  # steps 1, 2
    assert "<td>reward, last 20% of steps</td><td>0.480</td>" in sec  # steps 9, 10
    assert "<td>last step</td><td>10</td>" in sec
    assert "not recorded" not in sec and "section failed" not in html
    # GRPO's curves are its own; the training section keeps the SFT/DPO models
    assert "grpo" not in _section(html, "training")


def test_a_series_the_metrics_lack_is_named_not_drawn(full_run: Path, tmp_path: Path) -> None:
    records = [{k: v for k, v in _record(s).items() if k != "kl"} for s in range(1, 6)]
    sec = _section(build_report(_with_grpo(full_run, tmp_path, records)).read_text(), "grpo")
    assert "not recorded in grpo/metrics.jsonl: kl" in sec
    alts = IMG_ALT.findall(sec)
    assert alts and not any(re.search(r"\bkl\b", a) for a in alts)
    assert any("clip_frac" in a for a in alts)


def test_grpo_stage_without_metrics_says_not_available(full_run: Path, tmp_path: Path) -> None:
    sec = _section(build_report(_with_grpo(full_run, tmp_path, None)).read_text(), "grpo")
    assert "not available" in sec and "grpo/metrics.jsonl" in sec


def test_no_grpo_section_without_the_stage(full_report: Path) -> None:
    html = full_report.read_text()
    assert '<section id="grpo">' not in html and '<a href="#grpo">' not in html
    assert '<section id="training">' in html  # the others are all there


def test_headline_has_the_grpo_row_and_its_paired_differences(
    full_run: Path, tmp_path: Path
) -> None:
    """grpo evaluated as a fourth model: `summarize` pairs it with sft and ttpa, the
    headline shows its row and both differences."""
    from ttpa_ray.eval import summarize

    run = _with_grpo(full_run, tmp_path, [_record(1)])
    src, dst = run / "eval" / "ttpa" / "heldout", run / "eval" / "grpo" / "heldout"
    dst.mkdir(parents=True)
    rows = pq.read_table(src / "results.parquet").to_pylist()
    for r in rows:  # grpo gets every call right
        r.update(model="grpo", esm=1.0, exact=True, error_type=None)
    pq.write_table(
        pq.read_table(src / "results.parquet").from_pylist(rows), dst / "results.parquet"
    )
    metrics = json.loads((src / "metrics.json").read_text())
    metrics.update(esm=1.0, exact=1.0, esm_ci=[1.0, 1.0], exact_ci=[1.0, 1.0])
    (dst / "metrics.json").write_text(json.dumps(metrics))

    summary = summarize(run / "eval")
    assert {"grpo-sft", "grpo-ttpa"} <= set(summary["paired"])
    assert summary["paired"]["grpo-ttpa"]["n"] == len(rows)
    assert summary["paired"]["grpo-ttpa"]["esm_diff"] > 0
    (run / "eval" / "summary.json").write_text(json.dumps(summary))

    text = headline(run)
    table = text.split("paired differences", 1)[0]
    names = [ln.split()[0] for ln in table.splitlines()[3:] if ln.strip()]
    assert names == ["sft", "dpo_response", "ttpa", "grpo"]  # report order, grpo last
    assert re.search(r"^grpo\s+30\s+1\.000 \[1\.000, 1\.000\]\*", table, re.M)  # best: marked
    assert re.search(r"grpo − sft\s+30\s", text) and re.search(r"grpo − ttpa\s+30\s", text)
    head = _section(build_report(run).read_text(), "headline")
    assert "<td>grpo</td>" in head and "grpo − ttpa" in head
