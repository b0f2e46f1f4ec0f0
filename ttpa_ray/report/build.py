"""The run report: `build_report(run_dir)` writes `run_dir/report/index.html`, one
self-contained page (inline CSS, base64 PNG plots, HTML tables); `headline(run_dir)` is
the headline table as terminal text.

Every input is optional: a section whose files are missing says "not available: <file>",
and a section that fails on malformed input shows the error instead of aborting the page.

This module holds the headline and the assembly (`SECTIONS`, `render`); the sections live in
`sections_data` (pipeline, construct), `sections_models` (training, sampling, eval) and
`cluster`; `Run`, `MissingInput` and the shared helpers in `common` (re-exported here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ttpa_ray.report.cluster import sec_cluster
from ttpa_ray.report.common import (
    HEADLINE_SUITE,
    METRICS,
    MODELS,
    MissingInput,
    Run,
    _best_cells,
    _num,
    _order_models,
)
from ttpa_ray.report.html import esc, fmt, not_available, note, page, table
from ttpa_ray.report.sections_data import _sec_construct, _sec_pipeline
from ttpa_ray.report.sections_models import _sec_eval, _sec_sampling, _sec_training

__all__ = [
    "HEADLINE_SUITE",
    "METRICS",
    "MODELS",
    "SECTIONS",
    "MissingInput",
    "Run",
    "build_report",
    "headline",
    "headline_rows",
    "render",
]

log = logging.getLogger("ttpa_ray")


# -- headline ----------------------------------------------------------------------------------


def _summary_entry(entry: Any) -> dict[str, Any] | None:
    """One model's metrics from summary.json: flat {esm, exact, ast}, or per suite (held-out
    preferred)."""
    if not isinstance(entry, dict):
        return None
    if any(k in entry for k in ("esm", "exact", "ast")):
        return entry
    if isinstance(entry.get(HEADLINE_SUITE), dict):
        return _summary_entry(entry[HEADLINE_SUITE])
    for v in entry.values():
        got = _summary_entry(v) if isinstance(v, dict) else None
        if got is not None:
            return got
    return None


def headline_rows(run: Run) -> tuple[list[tuple[str, Any, Any, Any]], str]:
    """(model, esm, exact, ast) rows and the file they came from: `eval/summary.json`, else
    each model's `eval/<model>/heldout/metrics.json`. Raises MissingInput if neither exists."""
    try:
        summary = run.json("eval/summary.json")
        rows = []
        if isinstance(summary, dict):
            models = summary.get("models", summary)
            for m in _order_models(k for k in models if isinstance(k, str)):
                e = _summary_entry(models[m])
                if e is not None:
                    rows.append((m, e.get("esm"), e.get("exact"), e.get("ast")))
        if rows:
            return rows, "eval/summary.json"
    except MissingInput:
        pass
    rows = []
    eval_dir = run.path("eval")
    names = [p.name for p in eval_dir.iterdir() if p.is_dir()] if eval_dir.is_dir() else []
    for m in _order_models(names):
        rel = f"eval/{m}/{HEADLINE_SUITE}/metrics.json"
        try:
            mj = run.json(rel)
        except MissingInput:
            continue
        rows.append((m, mj.get("esm"), mj.get("exact"), mj.get("ast")))
    if not rows:
        raise MissingInput("eval/summary.json")
    return rows, f"eval/<model>/{HEADLINE_SUITE}/metrics.json"


def headline(run_dir: str | Path) -> str:
    """The headline table (models × mean ESM, exact-call and AST accuracy on the held-out
    suite) as plain text; `*` marks the best value per column."""
    run = Run(Path(run_dir))
    try:
        rows, source = headline_rows(run)
    except MissingInput as e:
        return f"headline: not available: {e.rel}" + (f" ({e.why})" if e.why else "")
    bold = _best_cells(rows, [1, 2, 3])
    header = ["model", *(label for _, label in METRICS)]
    cells = [
        [str(r[0])]
        + [
            ("n/a" if _num(r[c]) is None else fmt(_num(r[c])) + ("*" if (i, c) in bold else ""))
            for c in (1, 2, 3)
        ]
        for i, r in enumerate(rows)
    ]
    widths = [max(len(header[j]), *(len(c[j]) for c in cells)) for j in range(len(header))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    out = [
        f"TTPA headline: {HEADLINE_SUITE} suite ({source})",
        line(header),
        line(["-" * w for w in widths]),
        *(line(c) for c in cells),
        "(* best per column)",
    ]
    return "\n".join(out)


def _sec_headline(run: Run) -> str:
    rows, source = headline_rows(run)
    bold = _best_cells(rows, [1, 2, 3])
    return str(
        note(f"{HEADLINE_SUITE} suite, from {source}; best value per column in bold.")
    ) + table(["model", *(label for _, label in METRICS)], rows, bold=bold, cls="headline")


# -- assembly ----------------------------------------------------------------------------------

SECTIONS: list[tuple[str, str, Callable[[Run], str]]] = [
    ("headline", "Headline: held-out evaluation", _sec_headline),
    ("pipeline", "Pipeline stages", _sec_pipeline),
    ("construct", "Dataset construction", _sec_construct),
    ("training", "Training curves", _sec_training),
    ("sampling", "TPS sampling and preference pairs", _sec_sampling),
    ("eval", "Evaluation by suite", _sec_eval),
    ("cluster", "Cluster size over time", sec_cluster),
]


def _render_section(run: Run, fn: Callable[[Run], str]) -> str:
    try:
        return fn(run)
    except MissingInput as e:
        return str(not_available(e.rel, why=e.why))
    except Exception as e:  # noqa: BLE001 - one bad input must not lose the whole report
        log.exception("report section %s failed", fn.__name__)
        return f'<p class="error">section failed: {esc(type(e).__name__)}: {esc(e)}</p>'


def render(run_dir: str | Path) -> str:
    """The report page as an HTML string."""
    run = Run(Path(run_dir))
    name = run.dir.resolve().name or str(run.dir)
    toc = "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>' for sid, title, _ in SECTIONS)
    header = (
        f"<h1>TTPA run report: {esc(name)}</h1>\n"
        f'<p class="meta">run dir <code>{esc(run.dir.resolve())}</code> · generated '
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by ttpa_ray.report</p>"
    )
    body = []
    for sid, title, fn in SECTIONS:
        body.append(
            f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{_render_section(run, fn)}\n</section>'
        )
        if sid == "headline":
            body.append(f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>')
    return page(f"TTPA run report: {name}", header, "\n".join(body))


def build_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report/index.html` (self-contained) and return its path."""
    run_dir = Path(run_dir)
    out = run_dir / "report" / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render(run_dir), encoding="utf-8")
    tmp.replace(out)
    return out
