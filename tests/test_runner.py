"""The shard contract (`ttpa_ray.runner`) on plain Arrow tables, without Ray: planning and
skipping, routing, early stop, marker order, finalizing with the row-accounting check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pytest

from ttpa_ray import runner
from ttpa_ray.schema.io import StageCounts, read_rows

ROWS = pa.schema([("id", pa.int64()), ("_quarantine_reason", pa.string())])


def _counts(n_in: int, n_out: int) -> dict[str, dict]:
    return {"step": StageCounts("demo.step", n_in, n_out, n_in - n_out).__dict__}


def _write(shard: Path, key: str, ids: list[int]) -> None:
    rows = [{"id": i, "_quarantine_reason": None} for i in ids]
    runner.write_shard(shard, key, {"rows.parquet": (rows, ROWS)}, _counts(len(ids), len(ids)))


def _plan(tmp_path: Path, key: str, sizes: list[int]) -> runner.ShardPlan:
    paths = [tmp_path / "shards" / f"shard-{i}" for i in range(len(sizes))]
    return runner.ShardPlan.make(key, paths, lambda i, p: runner.Shard(p, sizes[i], i))


def test_plan_skips_shards_done_under_the_key_and_builds_only_pending(tmp_path):
    built = []

    def shard(i, path):
        built.append(i)
        return runner.Shard(path, 1, i)

    paths = [tmp_path / f"shard-{i}" for i in range(3)]
    _write(paths[1], "k", [1])
    plan = runner.ShardPlan.make("k", paths, shard)
    assert built == [0, 2] and [s.path for s in plan.pending] == [paths[0], paths[2]]
    assert plan.paths == paths and plan.skipped == 1
    assert plan.interrupted(2) is None
    assert plan.interrupted(1) == {"interrupted": True, "shards_run": 1, "shards_skipped": 1}
    # another key (another config): nothing is done
    assert runner.ShardPlan.make("other", paths, shard).skipped == 0


def _batches(*owners: list[int]) -> list[pa.Table]:
    """Batches of rows whose `owner` column is the index of their shard."""
    out, n = [], 0
    for own in owners:
        out.append(pa.table({"id": list(range(n, n + len(own))), "owner": own}))
        n += len(own)
    return out


def test_stream_routes_rows_and_completes_each_shard_when_its_last_row_is_out(tmp_path):
    plan = _plan(tmp_path, "k", [3, 2, 1])
    shards = plan.pending
    done: list[tuple[int, list[int]]] = []
    # shard 1 finishes in the second batch, shard 0 in the third, shard 2 in the last
    batches = _batches([0, 1, 0], [1], [0], [2])
    n = runner.stream(
        batches,
        lambda b: [shards[k] for k in b["owner"].to_pylist()],
        lambda s, t: done.append((s.payload, t["id"].to_pylist())),
    )
    assert n == 3
    assert done == [(1, [1, 3]), (0, [0, 2, 4]), (2, [5])]  # rows in arrival order


def test_stream_stops_after_n_shards_without_reading_further(tmp_path):
    shards = _plan(tmp_path, "k", [1, 1, 1]).pending
    read = []

    def batches():
        for b in _batches([0], [1], [2]):
            read.append(b["owner"][0].as_py())
            yield b

    done = []
    owner = lambda b: [shards[k] for k in b["owner"].to_pylist()]  # noqa: E731
    assert runner.stream(batches(), owner, lambda s, t: done.append(s.payload), 2) == 2
    assert done == [0, 1] and read == [0, 1]  # the third batch was never pulled
    assert runner.stream(batches(), owner, lambda s, t: done.append(s.payload), 0) == 0
    assert done == [0, 1]


def test_a_shard_short_of_rows_is_not_completed(tmp_path):
    # the stream ended early: the run reports an interruption instead of a short shard
    plan = _plan(tmp_path, "k", [2])
    done = []
    owner = lambda b: [plan.pending[0]] * b.num_rows  # noqa: E731
    assert runner.stream(_batches([0]), owner, lambda s, t: done.append(s)) == 0
    assert done == [] and plan.interrupted(0) is not None


def test_write_shard_writes_outputs_then_counts_then_success(tmp_path):
    shard = tmp_path / "shard-0"
    rows = [{"id": 1, "_quarantine_reason": None}]
    runner.write_shard(shard, "k", {"rows.parquet": (rows, ROWS)}, [{"x": 1}], seeds=[4, 9])
    assert json.loads((shard / "_SUCCESS").read_text()) == {"key": "k", "seeds": [4, 9]}
    assert json.loads((shard / "counts.json").read_text()) == [{"x": 1}]
    assert read_rows(shard / "rows.parquet") == rows
    mtimes = [(shard / n).stat().st_mtime_ns for n in ("rows.parquet", "counts.json", "_SUCCESS")]
    assert mtimes == sorted(mtimes)
    assert runner.shard_done(shard, "k")


def test_a_crash_between_outputs_and_success_leaves_the_shard_to_redo(tmp_path):
    shard = tmp_path / "shard-0"
    _write(shard, "old", [1])
    bad_schema = pa.schema([("id", pa.string())])  # fails mid-shard, after the marker went
    with pytest.raises((pa.ArrowException, TypeError)):
        runner.write_shard(shard, "new", {"rows.parquet": ([{"id": 1}], bad_schema)}, {})
    assert not (shard / "_SUCCESS").exists()
    # neither key vouches for the half-replaced shard: a re-run redoes it
    assert not runner.shard_done(shard, "old") and not runner.shard_done(shard, "new")


def test_a_torn_marker_means_redo_with_a_warning_naming_it(tmp_path, caplog):
    shard = tmp_path / "shard-0"
    _write(shard, "k", [1])
    (shard / "_SUCCESS").write_text('{"key": "k"')  # torn by a crash of an older version
    with caplog.at_level(logging.WARNING, logger="ttpa_ray"):
        plan = runner.ShardPlan.make("k", [shard], lambda i, p: runner.Shard(p, 1))
    assert plan.skipped == 0 and str(shard / "_SUCCESS") in caplog.text


def test_keyed_marker_guards_a_cache(tmp_path):
    marker, data = tmp_path / "cache.json", tmp_path / "cache.parquet"
    assert not runner.is_current(marker, "k")
    with runner.remarking(marker, "k"):
        data.write_text("v1")
    assert runner.is_current(marker, "k") and not runner.is_current(marker, "k2")
    with pytest.raises(RuntimeError), runner.remarking(marker, "k2"):
        raise RuntimeError("died while recomputing")
    assert not marker.exists()  # the old key no longer vouches for a half-rewritten cache


def test_finalize_concatenates_outputs_and_merges_counts_in_shard_order(tmp_path):
    paths = [tmp_path / "a", tmp_path / "b"]
    _write(paths[0], "k", [1, 2])
    rows = [{"id": 3, "_quarantine_reason": None}]
    runner.write_shard(paths[1], "k", {"rows.parquet": (rows, ROWS)}, _counts(2, 1))
    assert runner.concat(paths, "rows.parquet")["id"].to_pylist() == [1, 2, 3]
    merged = runner.merge_counts(runner.read_counts(paths))
    assert merged == {"step": StageCounts("demo.step", 4, 3, 1, 0.0)}


def test_merge_counts_raises_when_rows_were_lost(tmp_path):
    lost = {"step": {"stage": "demo.step", "rows_in": 3, "rows_out": 1, "rows_quarantined": 1}}
    with pytest.raises(RuntimeError, match="rows were lost"):
        runner.merge_counts([_counts(2, 2), lost])


def test_split_quarantine_keeps_every_row_on_one_side():
    table = pa.table({"id": [1, 2, 3], "_quarantine_reason": [None, "bad: x", None]})
    ok, bad = runner.split_quarantine(table)
    assert ok["id"].to_pylist() == [1, 3] and bad["id"].to_pylist() == [2]
