"""`ttpa_ray.report`: the HTML report of a run dir and the terminal headline."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from report_rundir import MISMATCH_STAGE, MODELS, make_run_dir

from ttpa_ray.report import build_report, headline

pytestmark = pytest.mark.timeout(120)

SECTION_HEADINGS = (
    "Headline: held-out evaluation",
    "Pipeline stages",
    "Dataset construction",
    "Training curves",
    "TPS sampling and preference pairs",
    "Evaluation by suite",
    "Cluster size over time",
)
IMG_RE = re.compile(
    r'<img class="plot" src="data:image/png;base64,([A-Za-z0-9+/=]*)" alt="([^"]*)"'
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_report_written_with_every_section(full_run: Path, full_report: Path) -> None:
    assert full_report == full_run / "report" / "index.html"
    html = _html(full_report)
    assert html.startswith("<!DOCTYPE html>")
    assert "<title>TTPA run report: run-full</title>" in html
    for h in SECTION_HEADINGS:
        assert f"<h2>{h}</h2>" in html, h
    # table of contents links every section
    for sid in ("headline", "pipeline", "construct", "training", "sampling", "eval", "cluster"):
        assert f'<a href="#{sid}">' in html and f'<section id="{sid}">' in html
    assert "not available" not in html, re.findall(r"not available: [^<]*", html)
    assert "section failed" not in html
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(https?:|file:|//)', html)


def test_headline_numbers_and_best_in_bold(full_report: Path) -> None:
    html = _html(full_report)
    head = html.split('<section id="headline">', 1)[1].split("</section>", 1)[0]
    for v in ("0.512", "0.402", "0.451", "0.601", "0.463", "0.735", "0.558", "0.604"):
        assert v in head, v
    for m in MODELS:
        assert f"<td>{m}</td>" in head
    assert "<td>0.402 [0.355, 0.450]</td>" in head and "<td>400</td>" in head
    # bold only where not a tie: ttpa's exact, ESM and AST; not tool-name acc. (paired
    # interval vs dpo_response includes 0) nor parse rate (equal to dpo_response's)
    assert head.count("<strong>") == 3
    for v in ("0.558 [0.510, 0.607]", "0.735 [0.695, 0.775]", "0.604 [0.550, 0.650]"):
        assert f"<strong>{v}</strong>" in head
    # paired differences and the sample
    assert "<td>ttpa − sft</td><td>400</td><td>+0.156 [+0.110, +0.200]</td>" in head
    assert "+0.015 [-0.020, +0.050]" in head
    assert "400 of 1234 tool-call turns" in head and "seed 0" in head
    assert "WARNING" not in head
    # the headline comes before the table of contents, both before the first section
    assert html.index('<section id="headline">') < html.index('<nav class="toc">')
    assert html.index('<nav class="toc">') < html.index('<section id="pipeline">')


def test_plots_are_inline_pngs_with_alt_text(full_report: Path) -> None:
    html = _html(full_report)
    imgs = IMG_RE.findall(html)
    # stage bars, loss, rewards, candidate ESM, margins, branch index, eval ESM, categories
    assert len(imgs) >= 8, len(imgs)
    assert html.count("<img") == len(imgs)
    for b64, alt in imgs:
        assert len(b64) > 1000
        assert alt.strip()
    data = base64.b64decode(imgs[0][0], validate=True)
    assert data.startswith(PNG_MAGIC)
    for b64, _ in imgs:
        assert base64.b64decode(b64).startswith(PNG_MAGIC)


def test_accounting_mismatch_flagged(full_report: Path) -> None:
    html = _html(full_report)
    pipe = html.split('<section id="pipeline">', 1)[1].split("</section>", 1)[0]
    flagged = re.findall(r'<tr class="acct-mismatch"><td>([^<]*)</td>', pipe)
    assert flagged == [MISMATCH_STAGE]
    assert "accounting mismatch: rows_in 100 ≠ rows_out 90 + rows_quarantined 5" in pipe
    assert f"Row accounting mismatch in 1 stage(s): {MISMATCH_STAGE}" in pipe
    # the consistent manifests are not flagged
    rest = html.split('<section id="construct">', 1)[1]
    assert 'class="acct-mismatch"' not in rest


def test_sections_show_their_data(full_report: Path) -> None:
    html = _html(full_report)
    # stage timing and statuses
    assert "<td>failed</td>" in html and "<td>skipped</td>" in html
    # construct: splits, quarantine reasons, card rendered with its text escaped
    assert "<td>schema_violation</td>" in html
    assert "Dataset card: ttpa-ray constructed episodes" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # sampling: counts by source from the manifest
    assert "<td>n_sample</td><td>60</td><td>25</td>" in html
    assert "<td>branch</td><td>30</td><td>15</td>" in html
    # eval: categories and error types
    for c in ("simple", "multiple", "parallel"):
        assert f"<td>{c}</td>" in html
    for e in ("wrong_name", "bad_args", "no_call"):
        assert f"<td>{e}</td>" in html
    assert "Suite: heldout" in html


def test_partial_run_renders_with_not_available_notes(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "partial", partial=True)
    html = _html(build_report(run))
    for h in SECTION_HEADINGS:
        assert f"<h2>{h}</h2>" in html, h
    for f in (
        "eval/summary.json",
        "construct/manifest.json",
        "construct/card.md",
        "sft/metrics.jsonl",
        "ttpa/metrics.jsonl",
        "dpo_response/metrics.jsonl",
        "sample/manifest.json",
        "sample/candidates.parquet",
        "sample/pairs.parquet",
    ):
        assert f"not available: {f}" in html, f
    assert "not available: eval/&lt;model&gt;/&lt;suite&gt;/results.parquet" in html
    assert "section failed" not in html
    # the pipeline section still has its table, plot and the mismatch flag
    assert len(IMG_RE.findall(html)) == 1
    assert 'class="acct-mismatch"' in html
    assert headline(run) == "headline: not available: eval/summary.json"


def test_empty_and_malformed_inputs_do_not_break_the_report(tmp_path: Path) -> None:
    run = tmp_path / "broken"
    html = _html(build_report(run))  # nothing at all
    assert "not available: pipeline.json" in html
    (run / "pipeline.json").write_text("{not json")
    (run / "sft").mkdir()
    (run / "sft" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    (run / "sample").mkdir()
    (run / "sample" / "pairs.parquet").write_text("not parquet")
    html = _html(build_report(run))
    assert "not available: pipeline.json (unreadable" in html
    assert "not available: sample/pairs.parquet (unreadable" in html
    assert "section failed" not in html
    assert len(IMG_RE.findall(html)) == 1  # the sft loss curve from its one whole line


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_headline_text(full_run: Path) -> None:
    text = headline(full_run)
    lines = text.splitlines()
    assert "heldout" in lines[0] and "eval/summary.json" in lines[0]
    assert _cells(lines[1]) == [
        "model",
        "n",
        "exact-call acc.",
        "mean ESM",
        "tool-name acc.",
        "parse rate",
        "AST acc.",
    ]
    rows = {_cells(ln)[0]: _cells(ln)[1:] for ln in lines[3:6]}
    assert rows == {
        "sft": [
            "400",
            "0.402 [0.355, 0.450]",
            "0.512 [0.470, 0.555]",
            "0.620 [0.570, 0.670]",
            "0.810 [0.770, 0.850]",
            "0.451 [0.400, 0.500]",
        ],
        "dpo_response": [
            "400",
            "0.463 [0.415, 0.512]",
            "0.601 [0.560, 0.645]",
            "0.700 [0.655, 0.745]",
            "0.900 [0.870, 0.930]",
            "n/a",
        ],
        "ttpa": [
            "400",
            "0.558 [0.510, 0.607]*",
            "0.735 [0.695, 0.775]*",
            "0.715 [0.670, 0.760]",
            "0.900 [0.870, 0.930]",
            "0.604 [0.550, 0.650]*",
        ],
    }
    assert lines[6] == "paired differences on the same examples:"
    paired = {_cells(ln)[0]: _cells(ln)[1:] for ln in lines[9:11]}
    assert paired["ttpa − sft"][:3] == ["400", "+0.156 [+0.110, +0.200]", "+0.223 [+0.190, +0.260]"]
    assert paired["ttpa − dpo_response"][3:] == [
        "+0.015 [-0.020, +0.050]",
        "+0.000 [-0.020, +0.020]",
    ]
    assert "400 of 1234 tool-call turns of the test split (k < 2)" in text
    assert "context_length_exceeded, scored 0): ttpa 2" in text
    assert "not a tie" in text and "WARNING" not in text


def test_headline_warns_when_sft_rarely_calls(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "r")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    summary["sft"]["parse_rate"] = 0.2
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    warning = (
        "WARNING: the SFT policy rarely emits tool calls; preference training has nothing to refine"
    )
    assert warning in headline(run)
    assert warning in _html(build_report(run))


def test_headline_falls_back_to_per_model_metrics(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "r")
    (run / "eval" / "summary.json").unlink()
    text = headline(run)
    assert "eval/<model>/heldout/metrics.json" in text
    # no paired differences there: ESM's intervals do not overlap, exact's do
    assert "0.735 [0.695, 0.775]*" in text and "0.558 [0.510, 0.607]  " in text
    assert "paired differences on the same examples" not in text
    # summary.json nested per suite is read too (held-out preferred); one model, old shape
    # (no intervals): nothing is marked best
    nested = {"sft": {"bfcl": {"esm": 0.1}, "heldout": {"esm": 0.3, "exact": 0.2, "ast": 0.1}}}
    (run / "eval" / "summary.json").write_text(json.dumps(nested))
    text = headline(run)
    assert "eval/summary.json" in text and "0.300" in text and "dpo_response" not in text
    assert "*" not in text.splitlines()[3]


def test_eval_metrics_fall_back_to_results(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "r")
    (run / "eval" / "ttpa" / "heldout" / "metrics.json").unlink()
    html = _html(build_report(run))
    sec = html.split('<section id="eval">', 1)[1].split("</section>", 1)[0]
    assert "eval/ttpa/heldout/metrics.json missing: metrics computed from results.parquet" in sec
    assert "<td>simple</td><td>ttpa</td><td>10</td>" in sec
    assert "section failed" not in html


def test_headline_reads_what_eval_summarize_writes(tmp_path: Path) -> None:
    harness = pytest.importorskip("ttpa_ray.eval.harness")
    run = make_run_dir(tmp_path / "r")
    summary = harness.summarize(run / "eval")
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    text = headline(run)
    assert "0.735 [0.695, 0.775]" in text and "0.512" in text and "dpo_response" in text
    assert re.search(r"ttpa − sft\s+30\s", text)  # paired over the fixture's 30 results rows


def test_pair_decisions_show_divergence_and_threshold_share(full_run: Path) -> None:
    from ttpa_ray.report.sections_data import sec_pair_decisions

    m = json.loads((full_run / "sample" / "manifest.json").read_text())
    html = sec_pair_decisions(m)
    assert "<h3>What the pairs decide</h3>" in html
    assert "in 30.0% of sampled turns (9 turns)" in html and "≥ 0.8" in html
    # 15 branch pairs: arg_value 7/15, text 0
    assert "<td>arg_value</td><td>7</td><td>0.467</td>" in html
    assert "<td>text</td><td>0</td><td>0.000</td>" in html
    assert len(IMG_RE.findall(html)) == 1
    # without branch pairs, or with a tokenizer that failed, a note instead of the table
    rest = {k: v for k, v in m.items() if k != "branch_divergence"}
    assert "no branch pairs" in sec_pair_decisions(rest)
    failed = sec_pair_decisions({**rest, "branch_divergence_error": "OSError: no tokenizer"})
    assert "branch divergence: OSError: no tokenizer" in failed
    assert sec_pair_decisions(None) == ""


def test_headline_shows_the_branch_histogram_and_the_exact_note(full_run: Path, tmp_path) -> None:
    text = headline(full_run)
    line = next(ln for ln in text.splitlines() if ln.startswith("TPS:"))
    # 15 branch pairs, most common class first, shares of the total
    assert line.startswith("TPS: 15 branch pairs diverge at arg_value 7 (47%), arg_key 3 (20%)")
    assert "threshold in 30% of turns" in line
    assert "NOTE: exact-call accuracy is ~0" not in text  # the fixture's models get calls right
    # every model's exact interval below 0.05: the demo says so plainly
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    path = run / "eval" / "summary.json"
    summary = json.loads(path.read_text())
    for model in MODELS:
        summary[model].update(exact=0.0, exact_ci=[0.0, 0.0])
    path.write_text(json.dumps(summary))
    assert "NOTE: exact-call accuracy is ~0 for every model" in headline(run)
