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
