"""Shared pieces of the run report: the `Run` reader of a run dir, the `MissingInput` error
a section raises for an absent or unreadable file, the report's model/metric constants and
small value and table helpers used by `build` and the section modules."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ttpa_ray.report.html import Markup, esc, fmt, table

MODELS = ("sft", "dpo_response", "ttpa", "grpo")  # the pipeline's models, in report order
HEADLINE_SUITE = "heldout"
METRICS = (("esm", "mean ESM"), ("exact", "exact-call acc."), ("ast", "AST acc."))
# the headline's metrics, exact-call accuracy first (DESIGN §7); AST only where it applies
HEADLINE_METRICS = (
    ("exact", "exact-call acc."),
    ("esm", "mean ESM"),
    ("name_acc", "tool-name acc."),
    ("parse_rate", "parse rate"),
    ("ast", "AST acc."),
)
PAIRED_METRICS = ("exact", "esm", "name_acc", "parse_rate")
SUMMARY_RESERVED = ("paired", "sampling")  # summary.json keys that are not models
BEST_RULE = (
    "best = the highest value, marked only when it is not a tie: its paired difference to "
    "every other model has a 95% interval above 0 (without a paired difference: its interval "
    "lies above the other's)"
)


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


def _interval(v: Any) -> tuple[float, float] | None:
    if isinstance(v, list | tuple) and len(v) == 2:
        lo, hi = _num(v[0]), _num(v[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def with_ci(value: Any, ci: Any, signed: bool = False) -> str:
    """`0.412 [0.365, 0.460]` (`+0.088 [+0.040, +0.135]` when `signed`); the value alone
    without an interval; `n/a` without a value."""
    v = _num(value)
    if v is None:
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    iv = _interval(ci)
    return f.format(v) + (f" [{f.format(iv[0])}, {f.format(iv[1])}]" if iv else "")


def paired_ci(paired: dict[str, Any], a: str, b: str, metric: str) -> tuple[float, float] | None:
    """The 95% interval of a − b on `metric` from summary.json's `paired` (entries `"a-b"`,
    or `"b-a"` negated); None when neither is there. Exact-call accuracy's interval is
    `ci` (the issue's shape), the others' `<metric>_ci`."""
    for key, sign in ((f"{a}-{b}", 1.0), (f"{b}-{a}", -1.0)):
        entry = paired.get(key)
        if not isinstance(entry, dict):
            continue
        iv = _interval(entry.get(f"{metric}_ci"))
        if iv is None and metric == "exact":
            iv = _interval(entry.get("ci"))
        if iv is not None:
            lo, hi = sorted((sign * iv[0], sign * iv[1]))
            return lo, hi
    return None


def best_model(
    entries: dict[str, dict[str, Any]], metric: str, paired: dict[str, Any] | None = None
) -> str | None:
    """The model whose `metric` is best and not a tie (`BEST_RULE`), else None.

    The leader is the unique highest value (an equal second: tie). It is best only when,
    against every other model with a value, the paired difference leader − other has a 95%
    interval with lower bound > 0, or, where no paired difference exists, its own interval's
    lower bound is above the other's upper bound (non-overlap: stricter). Missing intervals,
    or a single model, mark nothing: a point estimate alone is not a claim."""
    vals = {m: _num(e.get(metric)) for m, e in entries.items()}
    present = {m: v for m, v in vals.items() if v is not None}
    if len(present) < 2:
        return None
    leader = max(present, key=lambda m: present[m])
    top = present[leader]
    others = [m for m in present if m != leader]
    if any(math.isclose(present[m], top, abs_tol=1e-12) for m in others):
        return None
    own = _interval(entries[leader].get(f"{metric}_ci"))
    for m in others:
        diff = paired_ci(paired or {}, leader, m, metric)
        if diff is not None:
            if diff[0] <= 0:
                return None
            continue
        theirs = _interval(entries[m].get(f"{metric}_ci"))
        if own is None or theirs is None or own[0] <= theirs[1]:
            return None
    return leader


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
