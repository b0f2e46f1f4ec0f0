"""ESM as a Ray Data stage: read Parquet, score in an actor pool, split out quarantine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ttpa_ray.schema.io import StageCounts, write_manifest
from ttpa_ray.score.batch import PRED_FORMATS, QUARANTINE_COL, ESMBatchScorer

STAGE = "score"


def score_dataset(
    ds: Any,
    *,
    workers: int = 1,
    batch_size: int = 4096,
    num_cpus: float = 1.0,
    pred_col: str = "pred",
    gold_col: str = "gold",
    tools_col: str = "tools",
    pred_format: str = "calls",
) -> Any:
    """Add ESM columns to a Ray Dataset with a pool of `workers` scorer actors.

    `pred_format`: "calls" (JSON call lists) or "text" (raw model output); see
    `ESMBatchScorer`. Actors (not tasks) so each keeps its parsed-tools cache across
    batches. On a 2-core machine pass a fractional `num_cpus`, or the pool competes with
    the reader and stalls.
    """
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        ESMBatchScorer,
        fn_constructor_kwargs={
            "pred_col": pred_col,
            "gold_col": gold_col,
            "tools_col": tools_col,
            "pred_format": pred_format,
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
    )


def _ok_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch[QUARANTINE_COL])).drop_columns([QUARANTINE_COL])


def _bad_rows(batch: pa.Table, id_col: str) -> pa.Table:
    bad = batch.filter(pc.is_valid(batch[QUARANTINE_COL]))
    raw_cols = [c for c in bad.column_names if not c.startswith("esm_") and c != QUARANTINE_COL]
    raws = bad.select(raw_cols).to_pylist()
    ids = bad[id_col].to_pylist() if id_col in bad.column_names else [None] * bad.num_rows
    return pa.table(
        {
            "stage": [STAGE] * bad.num_rows,
            "row_id": [str(i) for i in ids],
            "reason": bad[QUARANTINE_COL].to_pylist(),
            "raw": [json.dumps(r, default=str, ensure_ascii=False) for r in raws],
        }
    )


def run_score(
    in_path: str | Path,
    out_path: str | Path,
    *,
    quarantine_path: str | Path | None = None,
    workers: int = 1,
    num_cpus: float = 1.0,
    batch_size: int = 4096,
    id_col: str = "id",
    pred_format: str = "calls",
    **cols: str,
) -> StageCounts:
    """Score a Parquet dataset on Ray Data; write scored rows, quarantine and a manifest.

    Outputs: `out_path` (Parquet directory), `quarantine_path` (default
    `<out>.quarantine.parquet`), `<out>.manifest.json`. `pred_format`: what the pred
    column holds, "calls" or "text" (see `ESMBatchScorer`). Raises ValueError on empty
    input or an unknown `pred_format`.
    """
    import ray

    from ttpa_ray.ray_utils import init_ray

    if pred_format not in PRED_FORMATS:  # fail here, not inside every actor
        raise ValueError(f"unknown pred_format {pred_format!r}; expected one of {PRED_FORMATS}")
    init_ray()
    t0 = time.perf_counter()
    out_path = Path(out_path)
    q_path = (
        Path(quarantine_path) if quarantine_path else out_path.with_suffix(".quarantine.parquet")
    )
    ds = ray.data.read_parquet(str(in_path))
    scored = score_dataset(
        ds,
        workers=workers,
        num_cpus=num_cpus,
        batch_size=batch_size,
        pred_format=pred_format,
        **cols,
    )
    # Materialise once: both outputs come from the same scored blocks, not two runs.
    scored = scored.materialize()
    rows_in = scored.count()
    if rows_in == 0:
        raise ValueError(f"score: input {in_path} has no rows")
    ok = scored.map_batches(_ok_rows, batch_format="pyarrow", batch_size=None).materialize()
    bad = scored.map_batches(
        _bad_rows, fn_args=(id_col,), batch_format="pyarrow", batch_size=None
    ).materialize()
    # Overwrite: appending to a previous run's files would duplicate rows.
    ok.write_parquet(str(out_path), mode="overwrite")
    bad.write_parquet(str(q_path), mode="overwrite")
    counts = StageCounts(STAGE, rows_in, ok.count(), bad.count(), time.perf_counter() - t0).check()
    write_manifest(
        out_path.with_suffix(".manifest.json"),
        [counts],
        config={
            "in": str(in_path),
            "workers": workers,
            "batch_size": batch_size,
            "pred_format": pred_format,
            **cols,
        },
        extra={"outputs": {"scored": str(out_path), "quarantine": str(q_path)}},
    )
    return counts
