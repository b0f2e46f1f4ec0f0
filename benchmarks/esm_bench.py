"""ESM throughput: the pure function in one process vs the Ray Data stage (1 and 2 actors).

Run: `make bench` (or `.venv/bin/python benchmarks/esm_bench.py [--rows N]`).

Compared side by side in one run, on the same single-call (pred, gold) pairs drawn from
the built-in catalog with seeded perturbations, shaped like TPS output (episodes of 5
turns x 5 candidates: tools repeat per episode, gold per turn):
  1. `esm_score` on Python objects in this process (calls/s, best of 3);
  2. the `score` stage on Ray Data (`ESMBatchScorer` in an ActorPoolStrategy of 1, then
     2 actors) over the same rows stored as Arrow (JSON-string calls and tools, as on
     disk), end to end including actor start-up.
Last line: RESULT esm_calls_per_s=<float> ray_per_worker_fraction=<float> ray_2v1_ratio=<float>
ray_end_to_end_fraction=<float>. The per-worker fraction is the 1-actor marginal rows/s
(start-up cancelled, see `bench_ray`) over the pure calls/s; the end-to-end fraction also
pays actor start-up.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import tempfile
import time
from typing import Any

from ttpa_ray.score.esm import esm_score
from ttpa_ray.score.perturb import PERTURBATIONS, perturb_call
from ttpa_ray.tools.catalog import load_builtin

WORDS = ["Paris", "Berlin", "Tokyo", "alpha", "report", "2026-03-14", "blue", "USD", "Lisbon"]


def sample_value(schema: dict[str, Any], rng: random.Random) -> Any:
    """A plausible value for a JSON-Schema property (enough for a benchmark)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema.get("type")
    if t == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if t == "number":
        return round(rng.uniform(schema.get("minimum", 0), schema.get("maximum", 1000)), 2)
    if t == "boolean":
        return rng.random() < 0.5
    if t == "array":
        return [sample_value(schema.get("items", {"type": "string"}), rng) for _ in range(2)]
    if t == "object":
        return {k: sample_value(v, rng) for k, v in schema.get("properties", {}).items()}
    return rng.choice(WORDS)


def make_pairs(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`n` rows shaped like TPS output: episodes of 5 turns x 5 candidates.

    Every row of an episode shares its tool window (as all turns of an episode do) and
    the 5 candidates of a turn share its gold call; each candidate is a perturbation
    (exact, wrong value, case, dropped argument, wrong tool), arguments as JSON strings.
    """
    rng = random.Random(seed)
    tools = load_builtin().openai()
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        window = rng.sample(tools, 5)
        for _turn in range(5):
            fn = rng.choice(window)["function"]
            params = fn["parameters"]
            props = params.get("properties", {})
            required = list(params.get("required", []))
            keys = required + [k for k in props if k not in required and rng.random() < 0.4]
            gold_args = {k: sample_value(props[k], rng) for k in keys}
            gold = [{"name": fn["name"], "arguments": gold_args}]
            names = [t["function"]["name"] for t in window]
            for kind in PERTURBATIONS[:5]:
                pred = [perturb_call(gold[0], names, kind, rng)]
                rows.append({"pred": pred, "gold": gold, "tools": window})
    return rows[:n], tools


def bench_pure(rows: list[dict[str, Any]], repeats: int = 3) -> tuple[float, float]:
    best = 0.0
    total = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = sum(esm_score(r["pred"], r["gold"], r["tools"]) for r in rows)
        best = max(best, len(rows) / (time.perf_counter() - t0))
    return best, total


def bench_batch(table: Any, batch_size: int) -> tuple[float, float]:
    """`ESMBatchScorer` in this process over Arrow slices: the stage's work minus Ray."""
    from ttpa_ray.score.batch import ESMBatchScorer

    scorer = ESMBatchScorer()
    t0 = time.perf_counter()
    total = 0.0
    for off in range(0, table.num_rows, batch_size):
        total += float(scorer(table.slice(off, batch_size))["esm_score"].to_numpy().sum())
    return table.num_rows / (time.perf_counter() - t0), total


def run_ray(paths: list[str], workers: int, batch_size: int) -> tuple[int, float, float]:
    """Read the Parquet files, score in `workers` actors, stream the scores back.

    Returns (rows, seconds end to end, score sum)."""
    import ray

    from ttpa_ray.score.stage import score_dataset

    t0 = time.perf_counter()
    ds = ray.data.read_parquet(paths)
    out = score_dataset(ds, workers=workers, num_cpus=0.5, batch_size=batch_size)
    n, total = 0, 0.0
    for batch in out.select_columns(["esm_score"]).iter_batches(batch_format="pyarrow"):
        n += batch.num_rows
        total += float(batch["esm_score"].to_numpy().sum())
    return n, time.perf_counter() - t0, total


def bench_ray(paths: list[str], workers: int, batch_size: int) -> tuple[float, float, float]:
    """(marginal rows/s, end-to-end rows/s, score sum) of the Ray stage.

    End to end includes actor start-up and scheduling, a fixed few seconds here. The
    marginal rate runs half the files and then all of them and divides the extra rows by
    the extra time: the per-row cost of reading, scoring and moving rows through Ray,
    with the fixed cost cancelled. Each is the best of two runs.
    """
    runs_half = [run_ray(paths[: len(paths) // 2], workers, batch_size) for _ in range(2)]
    runs_all = [run_ray(paths, workers, batch_size) for _ in range(2)]
    n_half, t_half = runs_half[0][0], min(r[1] for r in runs_half)
    n_all, t_all, total = runs_all[0][0], min(r[1] for r in runs_all), runs_all[0][2]
    return (n_all - n_half) / max(t_all - t_half, 1e-9), n_all / t_all, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ttpa_ray.ray_utils import init_ray

    rows, _ = make_pairs(args.rows)
    # Serialise each shared object once, as a writer of TPS output would; Parquet
    # stores the repeated gold/tools strings dictionary-encoded on disk.
    memo: dict[int, str] = {}
    table = pa.table(
        {
            k: [memo.setdefault(id(r[k]), json.dumps(r[k])) for r in rows]
            for k in ("pred", "gold", "tools")
        }
    )
    src = tempfile.mkdtemp(prefix="esm_bench_")
    n_files = 16
    step = -(-table.num_rows // n_files)
    paths = [f"{src}/part-{f:02d}.parquet" for f in range(n_files)]
    for f, path in enumerate(paths):
        pq.write_table(table.slice(f * step, step), path, row_group_size=args.batch_size)
    # The harness holds every row as Python objects; without this, each cyclic-GC pass
    # walks them all and taxes whichever path allocates most (the batch scorer ran at
    # half speed). Freezing them leaves GC the work the scorers themselves create.
    gc.collect()
    gc.freeze()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        f"rows: {args.rows} single-call pairs (5 tools/episode, 5 candidates/turn), "
        f"batch_size={args.batch_size}"
    )

    pure, pure_total = bench_pure(rows)
    print(f"pure esm_score (1 process, best of 3): {pure:,.0f} calls/s")

    batch_rate, batch_total = bench_batch(table, args.batch_size)
    print(
        f"ESMBatchScorer on Arrow, in process: {batch_rate:,.0f} rows/s ({batch_rate / pure:.2f} of pure)"
    )

    init_ray(num_cpus=os.cpu_count() or 2)
    run_ray(paths[:1], 1, args.batch_size)  # warm-up: worker processes, imports
    r1, e1, t1 = bench_ray(paths, 1, args.batch_size)
    print(
        f"ray data stage, 1 actor : {r1:,.0f} rows/s marginal ({r1 / pure:.2f} of pure), "
        f"{e1:,.0f} rows/s end to end ({e1 / pure:.2f})"
    )
    r2, e2, t2 = bench_ray(paths, 2, args.batch_size)
    print(
        f"ray data stage, 2 actors: {r2:,.0f} rows/s marginal ({r2 / r1:.2f}x of 1 actor), "
        f"{e2:,.0f} rows/s end to end ({e2 / e1:.2f}x)"
    )
    # The three paths must agree on the scores, or the speed figures mean nothing.
    assert abs(pure_total - batch_total) < 1e-6 * len(rows)
    assert abs(pure_total - t1) < 1e-6 * len(rows) and abs(t1 - t2) < 1e-6 * len(rows), (
        pure_total,
        t1,
        t2,
    )
    shutil.rmtree(src, ignore_errors=True)
    print(f"mean ESM over the pairs: {pure_total / len(rows):.4f} (identical in all four)")
    print(
        f"RESULT esm_calls_per_s={pure:.1f} ray_per_worker_fraction={r1 / pure:.3f} "
        f"ray_2v1_ratio={r2 / r1:.3f} ray_end_to_end_fraction={e1 / pure:.3f} "
        f"batch_scorer_fraction={batch_rate / pure:.3f}"
    )


if __name__ == "__main__":
    main()
