"""Parquet read/write, quarantine output, row accounting and resume keys shared by every
stage (the shard contract built on them: `ttpa_ray.runner`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ttpa_ray.atomic import atomic_file, write_json_atomic
from ttpa_ray.schema.records import QUARANTINE_SCHEMA, QuarantineRecord

log = logging.getLogger("ttpa_ray")


def write_rows(
    path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], schema: pa.Schema
) -> int:
    """Write rows (dicts) as one Parquet file with `schema`; returns the row count.

    Written to a temporary sibling, fsynced and renamed (`atomic_file`), so a reader never
    sees half a file, and a `_SUCCESS` written after it never outlives it on a crash.
    """
    table = pa.Table.from_pylist(list(rows), schema=schema)
    with atomic_file(path) as f:
        pq.write_table(table, f)
    return table.num_rows


def read_table(path: str | os.PathLike[str]) -> pa.Table:
    """Read a Parquet file or a directory of Parquet files (as Ray Data writes them)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Parquet data at {path}")
    if path.is_dir() and not any(path.rglob("*.parquet")):
        raise FileNotFoundError(f"directory {path} holds no .parquet files")
    return pq.read_table(path)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return read_table(path).to_pylist()


def write_quarantine(path: str | os.PathLike[str], records: Iterable[QuarantineRecord]) -> int:
    """Write quarantined rows (possibly none: an empty file still says 'nothing lost')."""
    return write_rows(path, (r.to_row() for r in records), QUARANTINE_SCHEMA)


@dataclass
class StageCounts:
    """Row accounting of one stage: rows_in must equal rows_out + rows_quarantined."""

    stage: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    seconds: float = 0.0

    def check(self) -> StageCounts:
        """Log the counts; raise if rows were lost or invented."""
        log.info(
            "stage %s: rows_in=%d rows_out=%d rows_quarantined=%d (%.2fs)",
            self.stage,
            self.rows_in,
            self.rows_out,
            self.rows_quarantined,
            self.seconds,
        )
        if self.rows_in != self.rows_out + self.rows_quarantined:
            raise RuntimeError(
                f"stage {self.stage}: rows_in={self.rows_in} != rows_out={self.rows_out} "
                f"+ rows_quarantined={self.rows_quarantined}: rows were lost"
            )
        return self

    def merged(self, counts: Mapping[str, Any]) -> StageCounts:
        """These counts plus another shard's (a `StageCounts` dict; `seconds` optional)."""
        return StageCounts(
            self.stage,
            self.rows_in + counts["rows_in"],
            self.rows_out + counts["rows_out"],
            self.rows_quarantined + counts["rows_quarantined"],
            round(self.seconds + counts.get("seconds", 0.0), 3),
        )


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config (for resume checks)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def content_fingerprint(path: Path) -> str:
    """Content hash of a file, or of a directory's files (names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_files(path: Path) -> list[tuple[str, int, int]]:
    """(name relative to `path`, size, mtime in ns) of every file under a model dir: what
    identifies a model without reading its bytes (hashing 15 GB of weights per run would
    cost minutes)."""
    return [
        (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(path.rglob("*"))
        if f.is_file()
    ]


def model_dir_id(path: Path) -> str:
    """Short hash of `model_files(path)`."""
    return config_hash(model_files(path))


def write_manifest(
    path: str | os.PathLike[str],
    counts: list[StageCounts],
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a manifest (counts per stage, config and its hash); returns its path.

    `path` is a `.json` file, or a directory that gets a `manifest.json`.
    """
    out = Path(path)
    if out.suffix != ".json":
        out = out / "manifest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config or {},
        "config_hash": config_hash(config or {}),
        "stages": [asdict(c) for c in counts],
        **(extra or {}),
    }
    return write_json_atomic(out, manifest, indent=2, sort_keys=True, default=str)


def length_stats(lengths: list[int]) -> dict[str, int]:
    """`n`, `min`, `p50`, `p90`, `p99`, `max` of token lengths (nearest-rank percentiles);
    all 0 for an empty list. For manifests, cards and the report."""
    xs = sorted(lengths)
    if not xs:
        return {"n": 0, "min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}

    def pct(q: float) -> int:
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]

    return {
        "n": len(xs),
        "min": xs[0],
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": xs[-1],
    }
