"""The run report: `build_report(run_dir)` writes `run_dir/report/index.html`, one
self-contained page (inline CSS, base64 PNG plots, HTML tables); `headline(run_dir)` is
the headline table as terminal text.

Every input is optional: a section whose files are missing says "not available: <file>",
and a section that fails on malformed input shows the error instead of aborting the page.

This module holds the headline and the assembly (`SECTIONS`, `render`); the sections live in
`sections_data` (pipeline, construct), `sections_models` (training, sampling, eval),
`sections_grpo` (only for a run with the grpo stage) and `cluster`; `Run`, `MissingInput` and the shared helpers in `common` (re-exported here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttpa_ray.report.cluster import sec_cluster
from ttpa_ray.report.common import (
    BEST_RULE,
    HEADLINE_METRICS,
    HEADLINE_SUITE,
    METRICS,
    MODELS,
    PAIRED_METRICS,
    SUMMARY_RESERVED,
    MissingInput,
    Run,
    _dict,
    _num,
    _order_models,
    best_model,
    with_ci,
)
from ttpa_ray.report.html import esc, fmt, not_available, note, page, table
from ttpa_ray.report.sections_data import _sec_construct, _sec_pipeline
from ttpa_ray.report.sections_grpo import sec_grpo
from ttpa_ray.report.sections_models import _sec_eval, _sec_sampling, _sec_training

__all__ = [
    "HEADLINE_SUITE",
    "METRICS",
    "MODELS",
    "SECTIONS",
    "MissingInput",
    "Run",
    "Headline",
    "build_report",
    "headline",
    "load_headline",
    "render",
]

log = logging.getLogger("ttpa_ray")


# -- headline ----------------------------------------------------------------------------------


@dataclass
class Headline:
    """The held-out comparison: per model its metrics (`summary.json` entry or
    `metrics.json`), the paired differences, how the suite was sampled, and the source."""

    entries: dict[str, dict[str, Any]]
    paired: dict[str, Any]
    sampling: dict[str, Any] | None
    source: str
    summary: dict[str, Any] = field(default_factory=dict)


def _summary_entry(entry: Any) -> dict[str, Any] | None:
    """One model's metrics from summary.json: flat {esm, exact, ast, ...}, or per suite
    (held-out preferred)."""
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


def load_headline(run: Run) -> Headline:
    """The headline's inputs: `eval/summary.json`, else each model's
    `eval/<model>/heldout/metrics.json` (no paired differences then). Raises MissingInput
    if neither exists."""
    try:
        summary = run.json("eval/summary.json")
        if isinstance(summary, dict):
            models = summary.get("models", summary)
            names = [k for k in models if isinstance(k, str) and k not in SUMMARY_RESERVED]
            entries = {}
            for m in _order_models(names):
                e = _summary_entry(models[m])
                if e is not None:
                    entries[m] = e
            if entries:
                return Headline(
                    entries,
                    _dict(summary.get("paired")),
                    summary.get("sampling") if isinstance(summary.get("sampling"), dict) else None,
                    "eval/summary.json",
                    summary,
                )
    except MissingInput:
        pass
    entries = {}
    sampling = None
    eval_dir = run.path("eval")
    names = [p.name for p in eval_dir.iterdir() if p.is_dir()] if eval_dir.is_dir() else []
    for m in _order_models(names):
        try:
            mj = run.json(f"eval/{m}/{HEADLINE_SUITE}/metrics.json")
        except MissingInput:
            continue
        if isinstance(mj, dict):
            entries[m] = mj
            sampling = sampling or (
                mj.get("sampling") if isinstance(mj.get("sampling"), dict) else None
            )
    if not entries:
        raise MissingInput("eval/summary.json")
    return Headline(entries, {}, sampling, f"eval/<model>/{HEADLINE_SUITE}/metrics.json", entries)


def _headline_table(h: Headline) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """(header, cells, best positions) of the models × metrics table; a metric no model has
    (AST on the held-out suite) is left out."""
    metrics = [
        (key, label)
        for key, label in HEADLINE_METRICS
        if key in ("exact", "esm") or any(_num(e.get(key)) is not None for e in h.entries.values())
    ]
    models = list(h.entries)
    best = {key: best_model(h.entries, key, h.paired) for key, _ in metrics}
    cells, marked = [], set()
    for i, m in enumerate(models):
        e = h.entries[m]
        row = [m, fmt(e.get("n"))]
        for j, (key, _) in enumerate(metrics):
            row.append(with_ci(e.get(key), e.get(f"{key}_ci")))
            if best[key] == m:
                marked.add((i, j + 2))
        cells.append(row)
    return ["model", "n", *(label for _, label in metrics)], cells, marked


def _paired_table(h: Headline) -> tuple[list[str], list[list[str]]]:
    rows = []
    for key, d in h.paired.items():
        if not isinstance(d, dict):
            continue
        a, b = d.get("a"), d.get("b")
        label = f"{a} − {b}" if a and b else str(key)
        rows.append(
            [
                label,
                fmt(d.get("n")),
                *(
                    with_ci(
                        d.get(f"{m}_diff"),
                        d.get("ci") if m == "exact" else d.get(f"{m}_ci"),
                        signed=True,
                    )
                    for m in PAIRED_METRICS
                ),
            ]
        )
    labels = dict(HEADLINE_METRICS)
    return ["pair (a − b)", "n", *(labels[m] for m in PAIRED_METRICS)], rows


def _sampling_text(s: dict[str, Any] | None) -> str | None:
    if not s:
        return None
    turns = f"k < {s['max_turns']}" if s.get("max_turns") else "every turn index"
    pool, n, asked = s.get("pool"), s.get("n"), s.get("requested")
    if asked is None:
        return f"held-out suite: all {pool} tool-call turns of the test split ({turns})"
    if isinstance(pool, int) and isinstance(asked, int) and pool < asked:
        return (
            f"held-out suite: all {pool} tool-call turns of the test split ({turns}): "
            f"fewer than the {asked} asked"
        )
    return (
        f"held-out suite: {n} of {pool} tool-call turns of the test split ({turns}), "
        f"stratified by seen/held-out tools and turn index k, seed {s.get('seed')}"
    )


def _context_text(h: Headline) -> str | None:
    over = {m: e.get("context_length_exceeded") for m, e in h.entries.items()}
    over = {m: v for m, v in over.items() if isinstance(v, int) and v > 0}
    if not over:
        return None
    counts = ", ".join(f"{m} {v}" for m, v in over.items())
    return f"prompts over the model's context (context_length_exceeded, scored 0): {counts}"


def _warning(h: Headline) -> str | None:
    from ttpa_ray.eval.summary import sft_warning

    return sft_warning(h.entries)


# Said plainly when no model gets a whole call right (the CPU demo's budget).
EXACT_NOTE = (
    "exact-call accuracy is ~0 for every model: at this training budget the policy has "
    "learnt the call format and (part of) the tool names, not yet the argument values, so "
    "compare ESM, tool-name accuracy and parse rate here; benchmarks/ttpa_gain.py trains a "
    "longer SFT start and measures TTPA's gain over seeds (README: Results; docs/pipeline.md)"
)


def _divergence_text(run: Run) -> str | None:
    """One line on what the TPS pairs teach: where branch pairs diverge, by token class,
    and how often the best sample reached the pair threshold."""
    try:
        m = run.json("sample/manifest.json")
    except MissingInput:
        return None
    hist = m.get("branch_divergence") if isinstance(m, dict) else None
    if not isinstance(hist, dict) or not sum(hist.values()):
        return None
    total = sum(hist.values())
    parts = [
        f"{k} {v} ({v / total:.0%})" for k, v in sorted(hist.items(), key=lambda x: -x[1]) if v
    ]
    line = f"TPS: {total} branch pairs diverge at " + ", ".join(parts)
    share = m.get("best_at_threshold_share")
    if isinstance(share, int | float):
        line += f"; the best sample reached the pair threshold in {share:.0%} of turns"
    return line


def _exact_note(h: Headline) -> str | None:
    """`EXACT_NOTE` when every model's exact-call interval lies below 0.05."""
    highs = [(e.get("exact_ci") or [None, None])[1] for e in h.entries.values()]
    if highs and all(isinstance(x, int | float) and x < 0.05 for x in highs):
        return EXACT_NOTE
    return None


def headline(run_dir: str | Path) -> str:
    """The headline table as plain text: models × exact-call accuracy, mean ESM, tool-name
    accuracy and parse rate on the held-out suite with 95% bootstrap intervals and `n`
    (`*` marks a best value that is not a tie, `BEST_RULE`), the paired differences, how
    the suite was sampled, and the SFT parse-rate warning when it applies."""
    run = Run(Path(run_dir))
    try:
        h = load_headline(run)
    except MissingInput as e:
        return f"headline: not available: {e.rel}" + (f" ({e.why})" if e.why else "")
    header, cells, marked = _headline_table(h)
    cells = [
        [c + ("*" if (i, j) in marked else "") for j, c in enumerate(row)]
        for i, row in enumerate(cells)
    ]
    out = [
        f"TTPA headline: {HEADLINE_SUITE} suite ({h.source}); 95% bootstrap intervals",
        *_text_table(header, cells),
    ]
    p_header, p_rows = _paired_table(h)
    if p_rows:
        out += ["paired differences on the same examples:", *_text_table(p_header, p_rows)]
    out += [t for t in (_sampling_text(h.sampling), _context_text(h), _divergence_text(run)) if t]
    out.append(f"(* {BEST_RULE})")
    if exact := _exact_note(h):
        out.append(f"NOTE: {exact}")
    if warning := _warning(h):
        out.append(warning)
    return "\n".join(out)


def _text_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(header[j]), *(len(c[j]) for c in cells)) for j in range(len(header))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(c) for c in cells)]


def _sec_headline(run: Run) -> str:
    h = load_headline(run)
    header, cells, marked = _headline_table(h)
    parts = [
        note(f"{HEADLINE_SUITE} suite, from {h.source}; values with 95% bootstrap intervals."),
        table(header, cells, bold=marked, cls="headline"),
    ]
    p_header, p_rows = _paired_table(h)
    if p_rows:
        parts += [
            note("Paired differences a − b on the same examples (95% bootstrap interval):"),
            table(p_header, p_rows, cls="paired"),
        ]
    parts += [note(t + ".") for t in (_sampling_text(h.sampling), _context_text(h)) if t]
    parts.append(note(f"Bold: {BEST_RULE}."))
    if exact := _exact_note(h):
        parts.append(note(f"Note: {exact}.", cls="warn"))
    if warning := _warning(h):
        parts.append(note(warning, cls="warn"))
    return "".join(str(p) for p in parts)


# -- assembly ----------------------------------------------------------------------------------

# (id, title, section): a section returning None is left out of the page and its contents
SECTIONS: list[tuple[str, str, Callable[[Run], str | None]]] = [
    ("headline", "Headline: held-out evaluation", _sec_headline),
    ("pipeline", "Pipeline stages", _sec_pipeline),
    ("construct", "Dataset construction", _sec_construct),
    ("training", "Training curves", _sec_training),
    ("grpo", "GRPO: online reward, KL and clipping", sec_grpo),
    ("sampling", "TPS sampling and preference pairs", _sec_sampling),
    ("eval", "Evaluation by suite", _sec_eval),
    ("cluster", "Cluster size over time", sec_cluster),
]


def _render_section(run: Run, fn: Callable[[Run], str | None]) -> str | None:
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
    sections = [(sid, title, _render_section(run, fn)) for sid, title, fn in SECTIONS]
    shown = [(sid, title, html) for sid, title, html in sections if html is not None]
    toc = "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>' for sid, title, _ in shown)
    header = (
        f"<h1>TTPA run report: {esc(name)}</h1>\n"
        f'<p class="meta">run dir <code>{esc(run.dir.resolve())}</code> · generated '
        f"{esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by ttpa_ray.report</p>"
    )
    body = []
    for sid, title, html in shown:
        body.append(f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{html}\n</section>')
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
