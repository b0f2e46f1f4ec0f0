"""The contract of a sharded, resumable stage, written once (construct and sample use it;
the keyed marker also guards the trainer's reference log-prob cache).

A stage splits its input into shards, each a directory with a fixed name. A shard is done
when its `_SUCCESS` names the run's resume key (a `config_hash` of what its content
depends on, see `schema.io`) and its `counts.json` can be read; a re-run skips it. Every
pending shard streams through one execution (with Ray Data: a model loads once per run,
not once per shard); output rows are routed to their shard, and a shard is written the
moment its last row is out, in this order, each file atomically:

    unlink `_SUCCESS` → outputs (Parquet) → `counts.json` → `_SUCCESS` {"key": ...}

so a crash at any point leaves the shard not done, and it is redone. Finalizing reads every
shard's outputs and merges their counts, raising when rows were lost. Nothing here imports
Ray: batches are any iterable of Arrow tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ttpa_ray.atomic import read_json, read_json_marker, write_json_atomic
from ttpa_ray.schema.io import StageCounts, read_table, write_rows

SUCCESS = "_SUCCESS"
COUNTS = "counts.json"
QUARANTINE_COLUMN = "_quarantine_reason"

# -- keyed markers ----------------------------------------------------------------------------


def is_current(marker: Path, key: str) -> bool:
    """Whether the JSON marker file `marker` names `key`. Missing, torn or garbled (warned,
    with its path) → False: the work it vouches for is redone, the run is not stopped."""
    data = read_json_marker(marker)
    return isinstance(data, dict) and data.get("key") == key


@contextlib.contextmanager
def remarking(marker: Path, key: str, **extra: Any) -> Iterator[None]:
    """Rewrite what `marker` vouches for. The old marker goes first (another key must not
    vouch for outputs this run half replaces), the block writes the outputs, and the marker
    `{"key": key, **extra}` is written last, atomically, only if the block finished."""
    marker.unlink(missing_ok=True)
    yield
    write_json_atomic(marker, {"key": key, **extra})


def shard_done(shard: Path, key: str) -> bool:
    """Whether `shard` finished under resume key `key`: its `_SUCCESS` names the key and
    its `counts.json` can be read (a torn one is warned about and means not done)."""
    return is_current(shard / SUCCESS, key) and read_json_marker(shard / COUNTS) is not None


# -- planning ---------------------------------------------------------------------------------


@dataclass(eq=False)  # by identity: a shard is a routing key, its payload may be unhashable
class Shard:
    """A shard to run: its directory, how many rows the stream owes it, and what the stage
    needs to write it (seeds, turns, quarantine found in the driver, ...)."""

    path: Path
    rows: int
    payload: Any = None


@dataclass
class ShardPlan:
    """Every shard of a run (`paths`, in order: finalizing reads them all) and the ones not
    done under `key` (`pending`)."""

    key: str
    paths: list[Path]
    pending: list[Shard]

    @classmethod
    def make(
        cls, key: str, paths: Sequence[Path], shard: Callable[[int, Path], Shard]
    ) -> ShardPlan:
        """Plan `paths` under `key`; `shard(i, path)` builds the i-th shard, and is called
        only for shards that are not done (a done one costs one marker read)."""
        pending = [shard(i, p) for i, p in enumerate(paths) if not shard_done(p, key)]
        return cls(key, list(paths), pending)

    @property
    def skipped(self) -> int:
        return len(self.paths) - len(self.pending)

    def progress(self, desc: str, enabled: bool = True) -> Any:
        """A tqdm bar over every shard, the skipped ones already counted."""
        from tqdm import tqdm

        return tqdm(
            total=len(self.paths),
            initial=self.skipped,
            desc=desc,
            unit="shard",
            disable=not enabled,
        )

    def interrupted(self, ran: int) -> dict[str, Any] | None:
        """What a run that wrote only `ran` of the pending shards returns (None: it wrote them
        all). Only `stop_after` gets there: a stream that ends early is not an error here."""
        if ran >= len(self.pending):
            return None
        return {"interrupted": True, "shards_run": ran, "shards_skipped": self.skipped}


# -- streaming --------------------------------------------------------------------------------


def stream(
    batches: Iterable[pa.Table],
    owner_of: Callable[[pa.Table], Sequence[Shard]],
    on_complete: Callable[[Shard, pa.Table], None],
    stop_after: int | None = None,
) -> int:
    """Route each batch's rows to their shard (`owner_of(batch)`: one shard per row) and
    call `on_complete(shard, rows)`, rows in arrival order, the moment a shard has all its
    `shard.rows` rows. With `stop_after`, stop once that many shards completed (a simulated
    interruption: the remaining batches are not read). Returns the shards completed."""
    if stop_after == 0:
        return 0
    parts: dict[Shard, list[pa.Table]] = {}
    have: dict[Shard, int] = {}
    completed = 0
    for batch in batches:
        owners = owner_of(batch)
        for shard in dict.fromkeys(owners):
            part = batch.filter(pa.array([o is shard for o in owners]))
            parts.setdefault(shard, []).append(part)
            have[shard] = have.get(shard, 0) + part.num_rows
            if have[shard] < shard.rows:
                continue
            on_complete(shard, pa.concat_tables(parts.pop(shard)))
            completed += 1
            if completed == stop_after:
                return completed
    return completed


def split_quarantine(table: pa.Table, column: str = QUARANTINE_COLUMN) -> tuple[pa.Table, pa.Table]:
    """(kept, quarantined) rows of `table`: `column` null, and set (the reason)."""
    return table.filter(pc.is_null(table[column])), table.filter(pc.is_valid(table[column]))


# -- writing and finalizing -------------------------------------------------------------------


def write_shard(
    shard: Path,
    key: str,
    files: Mapping[str, tuple[Iterable[dict[str, Any]], pa.Schema]],
    counts: Any,
    **marker: Any,
) -> None:
    """Write a finished shard: each Parquet output (`name → (rows, schema)`), then
    `counts` (JSON) to `counts.json`, then `_SUCCESS` `{"key": key, **marker}` last."""
    with remarking(shard / SUCCESS, key, **marker):
        for name, (rows, schema) in files.items():
            write_rows(shard / name, rows, schema)
        write_json_atomic(shard / COUNTS, counts)


def concat(shards: Sequence[Path], name: str) -> pa.Table:
    """The Parquet output `name` of every shard, in shard order, as one table."""
    return pa.concat_tables([read_table(s / name) for s in shards])


def read_counts(shards: Sequence[Path]) -> list[Any]:
    """Every shard's `counts.json`, in shard order."""
    return [read_json(s / COUNTS) for s in shards]


def merge_counts(per_shard: Iterable[Mapping[str, Mapping[str, Any]]]) -> dict[str, StageCounts]:
    """Sum each named `StageCounts` (as a dict) across shards, names in first-seen order,
    each checked: RuntimeError when its rows_in != rows_out + rows_quarantined."""
    totals: dict[str, StageCounts] = {}
    for counts in per_shard:
        for name, c in counts.items():
            totals[name] = (totals.get(name) or StageCounts(c["stage"], 0, 0, 0)).merged(c)
    return {name: c.check() for name, c in totals.items()}
