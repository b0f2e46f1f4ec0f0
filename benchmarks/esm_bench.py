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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from typing import Any

from ttpa_ray.score.esm import esm_score
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
    the 5 candidates of a turn share its gold call; each candidate is a perturbation.
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
            for kind in range(5):
                rows.append(
                    {"pred": [perturb(fn["name"], gold_args, props, window, kind, rng)],
                     "gold": gold, "tools": window}
                )
    return rows[:n], tools


def perturb(
    name: str, args: dict[str, Any], props: dict[str, Any], window: list[Any], kind: int,
    rng: random.Random,
) -> dict[str, Any]:
    """Candidate `kind`: 0 exact, 1 a resampled value, 2 lower-cased strings, 3 a dropped
    argument, 4 another tool of the window with the same arguments. Arguments are JSON
    strings, as models and OpenAI endpoints return them."""
    out = dict(args)
    if kind == 1 and out:
        k = rng.choice(list(out))
        out[k] = sample_value(props[k], rng)
    elif kind == 2:
        out = {k: (v.lower() if isinstance(v, str) else v) for k, v in out.items()}
    elif kind == 3 and out:
        out.pop(rng.choice(list(out)))
    elif kind == 4:
        name = rng.choice(window)["function"]["name"]
    return {"name": name, "arguments": json.dumps(out)}


def bench_pure(rows: list[dict[str, Any]], repeats: int = 3) -> tuple[float, float]:
    best = 0.0
    total = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = sum(esm_score(r["pred"], r["gold"], r["tools"]) for r in rows)
        best = max(best, len(rows) / (time.perf_counter() - t0))
    return best, total


def bench_ray(table: Any, workers: int, batch_size: int) -> tuple[float, float]:
    import ray

    from ttpa_ray.score.stage import score_dataset

    ds = ray.data.from_arrow(table).repartition(64).materialize()
    t0 = time.perf_counter()
    out = score_dataset(ds, workers=workers, num_cpus=0.5, batch_size=batch_size).materialize()
    elapsed = time.perf_counter() - t0
    total = sum(b["esm_score"].to_numpy().sum() for b in out.iter_batches(batch_format="pyarrow"))
    return out.count() / elapsed, float(total)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()

    import pyarrow as pa

    from ttpa_ray.ray_utils import init_ray

    rows, _ = make_pairs(args.rows)
    # Serialise each shared object once, as a writer of TPS output would.
    memo: dict[int, str] = {}
    table = pa.table(
        {
            k: [memo.setdefault(id(r[k]), json.dumps(r[k])) for r in rows]
            for k in ("pred", "gold", "tools")
        }
    )
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        f"rows: {args.rows} single-call pairs (5 tools/episode, 5 candidates/turn), "
        f"batch_size={args.batch_size}"
    )

    pure, pure_total = bench_pure(rows)
    print(f"pure esm_score (1 process, best of 3): {pure:,.0f} calls/s")

    init_ray(num_cpus=os.cpu_count() or 2)
    r1, t1 = bench_ray(table, 1, args.batch_size)
    print(f"ray data stage, 1 actor : {r1:,.0f} rows/s ({r1 / pure:.2f} of pure)")
    r2, t2 = bench_ray(table, 2, args.batch_size)
    print(f"ray data stage, 2 actors: {r2:,.0f} rows/s ({r2 / r1:.2f}x of 1 actor)")
    # The three paths must agree on the scores, or the speed figures mean nothing.
    assert abs(pure_total - t1) < 1e-6 * len(rows) and abs(t1 - t2) < 1e-6 * len(rows), (
        pure_total,
        t1,
        t2,
    )
    print(f"mean ESM over the pairs: {pure_total / len(rows):.4f} (identical in all three)")
    print(
        f"RESULT esm_calls_per_s={pure:.1f} ray_per_worker_fraction={r1 / pure:.3f} "
        f"ray_2v1_ratio={r2 / r1:.3f}"
    )


if __name__ == "__main__":
    main()
