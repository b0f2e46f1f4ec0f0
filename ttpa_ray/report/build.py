"""The run report: `build_report(run_dir)` writes `run_dir/report/index.html`, one
self-contained page (inline CSS, base64 PNG plots, HTML tables); `headline(run_dir)` is
the headline table as terminal text.

Every input is optional: a section whose files are missing says "not available: <file>",
and a section that fails on malformed input shows the error instead of aborting the page.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ttpa_ray.report import plots
from ttpa_ray.report.cluster import sec_cluster
from ttpa_ray.report.html import (
    Markup,
    esc,
    fmt,
    kv_table,
    markdown,
    not_available,
    note,
    page,
    table,
)

log = logging.getLogger("ttpa_ray")

MODELS = ("sft", "dpo_response", "ttpa")  # the pipeline's models, in report order
HEADLINE_SUITE = "heldout"
METRICS = (("esm", "mean ESM"), ("exact", "exact-call acc."), ("ast", "AST acc."))


class MissingInput(Exception):
    """An input file is absent or unreadable; the section shows `not available`."""

    def __init__(self, rel: str, why: str = "") -> None:
        super().__init__(rel)
        self.rel = rel
        self.why = why


# -- loading -----------------------------------------------------------------------------------


class Run:
    """Read access to a run dir; paths in messages are relative to it."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def path(self, rel: str) -> Path:
        return self.dir / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def json(self, rel: str) -> Any:
        p = self.path(rel)
        if not p.is_file():
            raise MissingInput(rel)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise MissingInput(rel, f"unreadable: {e}") from e

    def jsonl(self, rel: str) -> list[dict[str, Any]]:
        """The JSON objects of a JSONL file; a torn last line (a crash mid-write) is skipped."""
        p = self.path(rel)
        if not p.is_file():
            raise MissingInput(rel)
        out = []
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        if not out:
            raise MissingInput(rel, "no records")
        return out

    def parquet(self, rel: str, columns: Sequence[str]) -> dict[str, list[Any]]:
        """The wanted columns that the file has, as Python lists."""
        import pyarrow.parquet as pq

        p = self.path(rel)
        if not p.exists():
            raise MissingInput(rel)
        try:
            names = set(pq.read_schema(p).names) if p.is_file() else None
            cols = [c for c in columns if names is None or c in names]
            t = pq.read_table(p, columns=cols)
        except Exception as e:  # noqa: BLE001 - any unreadable file is "not available"
            raise MissingInput(rel, f"unreadable: {e}") from e
        return {c: t.column(c).to_pylist() for c in t.column_names}


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


def _mean(vals: Iterable[Any]) -> float | None:
    xs = [x for x in (_num(v) for v in vals) if x is not None]
    return sum(xs) / len(xs) if xs else None


def _order_models(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [m for m in MODELS if m in names] + sorted(names - set(MODELS))


def _best_cells(rows: Sequence[Sequence[Any]], cols: Sequence[int]) -> set[tuple[int, int]]:
    """(row, col) of the highest value in each of `cols` (ties all bold; None ignored)."""
    bold = set()
    for c in cols:
        vals = [(i, _num(r[c])) for i, r in enumerate(rows)]
        present = [v for _, v in vals if v is not None]
        if len(present) < 1:
            continue
        top = max(present)
        bold |= {(i, c) for i, v in vals if v is not None and math.isclose(v, top, abs_tol=1e-12)}
    return bold


def _accounting(
    stages: Sequence[dict[str, Any]], name_key: str, with_seconds: bool = False
) -> tuple[Markup, list[str]]:
    """Row accounting table; flags stages where rows_in != rows_out + rows_quarantined."""
    rows, classes, bad = [], [], []
    for st in stages:
        name = str(st.get(name_key, "?"))
        rin, rout, rq = st.get("rows_in"), st.get("rows_out"), st.get("rows_quarantined")
        if rin is None and rout is None and rq is None:
            check: Any = "not recorded"
            cls = None
        elif any(_num(v) is None for v in (rin, rout, rq)):
            check = "incomplete counts"
            cls = None
        elif _num(rin) != (_num(rout) or 0) + (_num(rq) or 0):
            check = Markup(
                f'<span class="flag">⚠ accounting mismatch: rows_in {esc(rin)} ≠ '
                f"rows_out {esc(rout)} + rows_quarantined {esc(rq)}</span>"
            )
            cls = "acct-mismatch"
            bad.append(name)
        else:
            check = "ok"
            cls = None
        secs = [_num(st.get("seconds"))] if with_seconds else []
        rows.append((name, rin, rout, rq, *secs, check))
        classes.append(cls)
    out = table(
        [
            "stage",
            "rows_in",
            "rows_out",
            "rows_quarantined",
            *(["seconds"] * with_seconds),
            "check",
        ],
        rows,
        digits=2,
        row_classes=classes,
        cls="accounting",
    )
    if bad:
        warn = (
            f'<p class="warn">Row accounting mismatch in {len(bad)} stage(s): '
            f"{esc(', '.join(bad))} (rows_in ≠ rows_out + rows_quarantined).</p>"
        )
        out = Markup(warn + out)
    return out, bad


def _stages_list(raw: Any) -> list[dict[str, Any]]:
    """pipeline.json `stages`: a list of {name, ...} or a mapping name → record."""
    if isinstance(raw, dict):
        return [{"name": k, **(v if isinstance(v, dict) else {})} for k, v in raw.items()]
    if isinstance(raw, list):
        return [s for s in raw if isinstance(s, dict)]
    return []


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _compact(v: Any) -> str:
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=isinstance(v, dict), default=str)
    return fmt(v)


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


# -- sections ----------------------------------------------------------------------------------


def _sec_pipeline(run: Run) -> str:
    state = run.json("pipeline.json")
    stages = _stages_list(state.get("stages") if isinstance(state, dict) else None)
    if not stages:
        return str(not_available("pipeline.json", why="no stages recorded"))
    total = sum(_num(s.get("seconds")) or 0.0 for s in stages)
    known = {"name", "status", "seconds", "rows_in", "rows_out", "rows_quarantined", "key"}
    known |= {"started_at", "ended_at"}
    rows, classes = [], []
    for s in stages:
        secs = _num(s.get("seconds"))
        extra = "; ".join(f"{k}={_compact(v)}" for k, v in s.items() if k not in known)
        rows.append(
            (
                s.get("name", "?"),
                s.get("status", "?"),
                fmt(secs, 1) if secs is not None else None,
                f"{100 * secs / total:.1f}%" if secs is not None and total > 0 else None,
                extra or None,
            )
        )
        classes.append("status-failed" if s.get("status") == "failed" else None)
    parts = [
        "<h3>Stage timing</h3>",
        note(f"total wall time of recorded stages: {total:.1f} s"),
        table(["stage", "status", "seconds", "share", "details"], rows, row_classes=classes),
    ]
    timed = [s for s in stages if _num(s.get("seconds")) is not None]
    if timed:
        parts.append(
            plots.stage_seconds(
                [str(s.get("name", "?")) for s in timed],
                [_num(s.get("seconds")) or 0.0 for s in timed],
                [str(s.get("status", "")) for s in timed],
            )
        )
    acct, _ = _accounting(stages, "name")
    parts += ["<h3>Row accounting</h3>", acct]
    config = state.get("config") if isinstance(state, dict) else None
    if config:
        parts.append(
            "<details><summary>pipeline config</summary><pre>"
            + esc(json.dumps(config, indent=2, sort_keys=True, default=str))
            + "</pre></details>"
        )
    return "\n".join(str(p) for p in parts)


def _sec_construct(run: Run) -> str:
    parts: list[str] = []
    try:
        m = run.json("construct/manifest.json")
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))
        m = None
    if isinstance(m, dict):
        top = [
            (k, _compact(m[k]))
            for k in (
                "teacher",
                "catalog",
                "created",
                "config_hash",
                "quarantined",
                "holdout_tools",
            )
            if k in m
        ]
        if top:
            parts.append(kv_table(top))
        if isinstance(m.get("splits"), dict):
            parts += [
                "<h3>Splits</h3>",
                table(["split", "episodes"], list(m["splits"].items())),
            ]
        if isinstance(m.get("stages"), list):
            acct, _ = _accounting(
                [s for s in m["stages"] if isinstance(s, dict)], "stage", with_seconds=True
            )
            parts += ["<h3>Steps: row accounting</h3>", acct]
        reasons = m.get("quarantine_reasons")
        parts.append("<h3>Quarantine reasons</h3>")
        if isinstance(reasons, dict) and reasons:
            parts.append(
                table(["reason", "rows"], sorted(reasons.items(), key=lambda kv: -(kv[1] or 0)))
            )
        else:
            parts.append(note("no quarantined rows recorded"))
        if isinstance(m.get("stats"), dict):
            parts += [
                "<h3>Episode statistics</h3>",
                kv_table([(k, _compact(v)) for k, v in m["stats"].items()]),
            ]
    parts.append("<h3>Dataset card</h3>")
    if run.exists("construct/card.md"):
        card = run.path("construct/card.md").read_text(errors="replace")
        parts.append('<div class="card">' + markdown(card, run.path("construct")) + "</div>")
    else:
        parts.append(not_available("construct/card.md"))
    return "\n".join(str(p) for p in parts)


def _series(recs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(recs):
        y = _num(r.get(key))
        if y is None:
            continue
        xs.append(_num(r.get("step")) or float(i + 1))
        ys.append(y)
    return xs, ys


def _sec_training(run: Run) -> str:
    parts: list[str] = []
    loaded: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for m in MODELS:
        rel = f"{m}/metrics.jsonl"
        try:
            recs = run.jsonl(rel)
        except MissingInput as e:
            missing.append(not_available(e.rel, why=e.why))
            continue
        recs.sort(key=lambda r: _num(r.get("step")) or 0.0)
        loaded[m] = recs
    parts += missing
    if not loaded:
        return "\n".join(str(p) for p in parts)
    rows = []
    for m, recs in loaded.items():
        last = recs[-1]
        losses = [x for x in (_num(r.get("loss")) for r in recs) if x is not None]
        rows.append(
            (
                m,
                len(recs),
                last.get("step"),
                losses[0] if losses else None,
                losses[-1] if losses else None,
                _num(last.get("rewards/accuracy")),
                _num(last.get("rewards/margin")),
                _num(last.get("lr")),
                _mean(r.get("tokens_per_s") for r in recs),
            )
        )
    parts.append(
        table(
            [
                "model",
                "records",
                "last step",
                "first loss",
                "last loss",
                "last reward acc.",
                "last reward margin",
                "last lr",
                "mean tokens/s",
            ],
            [
                tuple(f"{v:.3g}" if j == 7 and isinstance(v, float) else v for j, v in enumerate(r))
                for r in rows
            ],
        )
    )
    curves = {m: _series(recs, "loss") for m, recs in loaded.items()}
    curves = {m: c for m, c in curves.items() if c[0]}
    if curves:
        parts.append(plots.loss_curves(curves))
    acc = {m: _series(recs, "rewards/accuracy") for m, recs in loaded.items()}
    margin = {m: _series(recs, "rewards/margin") for m, recs in loaded.items()}
    acc = {m: c for m, c in acc.items() if c[0]}
    margin = {m: c for m, c in margin.items() if c[0]}
    if acc or margin:
        parts.append(plots.reward_curves(acc, margin))
    else:
        parts.append(note("no DPO reward metrics (rewards/accuracy, rewards/margin) recorded"))
    return "\n".join(str(p) for p in parts)


def _sec_sampling(run: Run) -> str:
    parts: list[str] = []
    try:
        m = run.json("sample/manifest.json")
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))
        m = None
    if isinstance(m, dict):
        parts.append(
            kv_table(
                [
                    (k, _compact(m[k]))
                    for k in ("pairs", "forward_tokens_per_pair", "mean_candidate_esm")
                    if k in m
                ]
            )
        )
        pbs = _dict(m.get("pairs_by_source"))
        cbs = _dict(m.get("candidates_by_source"))
        if pbs or cbs:
            srcs = sorted(set(pbs) | set(cbs))
            parts += [
                "<h3>Counts by source</h3>",
                table(
                    ["source", "candidates", "pairs"],
                    [(s, cbs.get(s), pbs.get(s)) for s in srcs],
                ),
            ]
        if isinstance(m.get("stages"), list):
            acct, _ = _accounting(
                [s for s in m["stages"] if isinstance(s, dict)], "stage", with_seconds=True
            )
            parts += ["<h3>Steps: row accounting</h3>", acct]

    parts.append("<h3>Candidates</h3>")
    try:
        cands = run.parquet("sample/candidates.parquet", ["source", "esm_score"])
        by_src: dict[str, list[float]] = defaultdict(list)
        for s, v in zip(cands.get("source", []), cands.get("esm_score", []), strict=False):
            if _num(v) is not None:
                by_src[str(s)].append(float(v))
        if by_src:
            parts.append(
                table(
                    ["source", "candidates", "mean ESM", "share ESM = 1"],
                    [
                        (s, len(v), _mean(v), sum(x >= 1.0 for x in v) / len(v))
                        for s, v in sorted(by_src.items())
                    ],
                )
            )
            parts.append(
                plots.histograms(
                    dict(sorted(by_src.items())),
                    title="ESM of sampled candidates by source",
                    xlabel="ESM score",
                    range_=(0.0, 1.0),
                    alt="histogram of candidate ESM scores, one line per sampling source",
                )
            )
        else:
            parts.append(note("candidates.parquet has no ESM scores", cls="na"))
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))

    parts.append("<h3>Preference pairs</h3>")
    try:
        pairs = run.parquet(
            "sample/pairs.parquet",
            ["source", "chosen_score", "rejected_score", "branch_token_index"],
        )
        n = len(next(iter(pairs.values()), []))
        srcs = [str(s) for s in pairs.get("source", ["?"] * n)]
        chosen = pairs.get("chosen_score", [None] * n)
        rejected = pairs.get("rejected_score", [None] * n)
        margins: dict[str, list[float]] = defaultdict(list)
        for s, c, r in zip(srcs, chosen, rejected, strict=False):
            if _num(c) is not None and _num(r) is not None:
                margins[s].append(float(c) - float(r))
        counts = Counter(srcs)
        parts.append(
            table(
                ["source", "pairs", "mean chosen", "mean rejected", "mean margin"],
                [
                    (
                        s,
                        counts[s],
                        _mean(c for s2, c in zip(srcs, chosen, strict=False) if s2 == s),
                        _mean(r for s2, r in zip(srcs, rejected, strict=False) if s2 == s),
                        _mean(margins.get(s, [])),
                    )
                    for s in sorted(counts)
                ],
            )
        )
        plot_row = []
        if margins:
            plot_row.append(
                plots.histograms(
                    dict(sorted(margins.items())),
                    title="chosen − rejected ESM per pair",
                    xlabel="score margin",
                    range_=(0.0, 1.0),
                    alt="histogram of chosen minus rejected ESM score margins by source",
                )
            )
        bti = [
            int(v)
            for v in pairs.get("branch_token_index", [])
            if _num(v) is not None and float(v) >= 0
        ]
        if bti:
            plot_row.append(
                plots.histograms(
                    {"branch": bti},
                    title="branch token index of pairs (TPS branch points)",
                    xlabel="token index of the branch point in the response",
                    integer=True,
                    alt="histogram of branch_token_index over branch pairs",
                )
            )
        else:
            plot_row.append(note("no pairs with a branch_token_index ≥ 0"))
        parts.append('<div class="plots">' + "".join(plot_row) + "</div>")
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))
    return "\n".join(str(p) for p in parts)


def _eval_layout(run: Run) -> dict[str, list[str]]:
    """suite → models having `results.parquet` or `metrics.json` for it."""
    root = run.path("eval")
    out: dict[str, list[str]] = defaultdict(list)
    if not root.is_dir():
        return {}
    for mdir in root.iterdir():
        if not mdir.is_dir():
            continue
        for sdir in mdir.iterdir():
            if sdir.is_dir() and (
                (sdir / "results.parquet").exists() or (sdir / "metrics.json").is_file()
            ):
                out[sdir.name].append(mdir.name)
    suites = sorted(out, key=lambda s: (s != HEADLINE_SUITE, s))
    return {s: _order_models(out[s]) for s in suites}


def _metrics_from_results(res: dict[str, list[Any]]) -> dict[str, Any]:
    n = len(next(iter(res.values()), []))
    cats = [str(c) for c in res.get("category", ["all"] * n)]
    esm, exact, ast = (res.get(k, [None] * n) for k in ("esm", "exact", "ast"))
    by_cat: dict[str, dict[str, Any]] = {}
    for c in sorted(set(cats)):
        idx = [i for i, x in enumerate(cats) if x == c]
        by_cat[c] = {
            "n": len(idx),
            "esm": _mean(esm[i] for i in idx),
            "exact": _mean(exact[i] for i in idx),
            "ast": _mean(ast[i] for i in idx),
        }
    # bucketed like eval's `error_kind`: the first label, without detail
    errors = Counter(
        re.split(r"[,:!=\s]", str(e), maxsplit=1)[0] or str(e)
        for e in res.get("error_type", [])
        if e not in (None, "", "none", "ok")
    )
    return {
        "n": n,
        "esm": _mean(esm),
        "exact": _mean(exact),
        "ast": _mean(ast),
        "errors": dict(errors),
        "by_category": by_cat,
    }


def _sec_eval(run: Run) -> str:
    layout = _eval_layout(run)
    if not layout:
        return str(not_available("eval/<model>/<suite>/results.parquet", "metrics.json"))
    parts: list[str] = []
    for suite, models in layout.items():
        parts.append(f'<h3 id="eval-{esc(suite)}">Suite: {esc(suite)}</h3>')
        metrics: dict[str, dict[str, Any]] = {}
        esm_vals: dict[str, list[float]] = {}
        notes: list[str] = []
        for m in models:
            base = f"eval/{m}/{suite}"
            res = None
            try:
                res = run.parquet(
                    f"{base}/results.parquet", ["category", "esm", "exact", "ast", "error_type"]
                )
                esm_vals[m] = [float(v) for v in res.get("esm", []) if _num(v) is not None]
            except MissingInput as e:
                notes.append(not_available(e.rel, why=e.why))
            try:
                mj = run.json(f"{base}/metrics.json")
                if not isinstance(mj, dict):
                    raise MissingInput(f"{base}/metrics.json", "not a JSON object")
                metrics[m] = mj
            except MissingInput as e:
                if res is not None:
                    metrics[m] = _metrics_from_results(res)
                    notes.append(note(f"{e.rel} missing: metrics computed from results.parquet"))
                else:
                    notes.append(not_available(e.rel, why=e.why))
        parts += notes
        if metrics:
            rows = [
                (
                    m,
                    metrics[m].get("n"),
                    metrics[m].get("esm"),
                    metrics[m].get("exact"),
                    metrics[m].get("ast"),
                )
                for m in metrics
            ]
            parts.append(
                table(
                    ["model", "n", *(label for _, label in METRICS)],
                    rows,
                    bold=_best_cells(rows, [2, 3, 4]),
                )
            )
        if esm_vals:
            parts.append(
                plots.histograms(
                    esm_vals,
                    title=f"ESM distribution per model ({suite})",
                    xlabel="ESM score",
                    range_=(0.0, 1.0),
                    alt=f"histograms of per-example ESM for {', '.join(esm_vals)} on {suite}",
                )
            )
        # accuracy by category
        cat_models = {m: _dict(mj.get("by_category")) for m, mj in metrics.items()}
        cat_models = {m: c for m, c in cat_models.items() if c}
        parts.append(f"<h4>Accuracy by category ({esc(suite)})</h4>")
        if cat_models:
            cats = sorted({c for bc in cat_models.values() for c in bc})
            parts.append(
                plots.grouped_bars(
                    cats,
                    {
                        m: [_num((bc.get(c) or {}).get("exact")) for c in cats]
                        for m, bc in cat_models.items()
                    },
                    title=f"exact-call accuracy by category ({suite})",
                    ylabel="exact-call accuracy",
                    alt=f"grouped bar chart of exact-call accuracy per category and model on {suite}",
                )
            )
            crow = []
            for c in cats:
                for m, bc in cat_models.items():
                    v = bc.get(c)
                    if isinstance(v, dict):
                        crow.append((c, m, v.get("n"), v.get("esm"), v.get("exact"), v.get("ast")))
            parts.append(table(["category", "model", "n", *(label for _, label in METRICS)], crow))
        else:
            parts.append(note("no per-category metrics", cls="na"))
        # error types
        parts.append(f"<h4>Error types ({esc(suite)})</h4>")
        errs = {m: _dict(mj.get("errors")) for m, mj in metrics.items() if "errors" in mj}
        types = sorted({t for e in errs.values() for t in e})
        if types:
            parts.append(
                table(
                    ["error type", *errs],
                    [(t, *((errs[m] or {}).get(t, 0) for m in errs)) for t in types],
                )
            )
        elif errs:
            parts.append(note("no errors recorded"))
        else:
            parts.append(note("no error counts", cls="na"))
    return "\n".join(str(p) for p in parts)


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
