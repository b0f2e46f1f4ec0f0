"""Parquet read/write, quarantine output and row accounting shared by every stage."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ttpa_ray.atomic import atomic_file, read_json_marker, write_json_atomic
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

    def merged(self, counts: dict[str, Any]) -> StageCounts:
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


def shard_done(shard: Path, key: str) -> bool:
    """Whether `shard` finished under resume key `key`: its `_SUCCESS` names the key and
    its `counts.json` can be read. A torn or garbled marker (warned, with its path) means
    not done, so the shard is redone rather than the run stopped."""
    success = read_json_marker(shard / "_SUCCESS")
    if not isinstance(success, dict) or success.get("key") != key:
        return False
    return read_json_marker(shard / "counts.json") is not None


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
