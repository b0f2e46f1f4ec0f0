"""ESM as Ray Data stages: `ttpa-ray score` (read Parquet, score in an actor pool, split
out quarantine) and TPS's map stage over each turn's candidates (`score_candidates`)."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from ttpa_ray.outdir import check_file_writable, check_replaceable, replacing_dir, replacing_file
from ttpa_ray.runner import split_quarantine
from ttpa_ray.schema.io import StageCounts, write_manifest
from ttpa_ray.score.batch import PRED_FORMATS, QUARANTINE_COL, ESMBatchScorer
from ttpa_ray.storage import is_uri

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


@cache
def _scorer() -> Any:
    # One per worker process: its parsed-tools cache then spans batches (the same tool
    # lists recur across every turn of an episode). Candidates are model text, read as
    # evaluation reads it, so a candidate's ESM here is its ESM in eval.
    return ESMBatchScorer(pred_format="text")


def score_candidates(batch: pa.Table) -> pa.Table:
    """TPS's ESM map stage: a `scores` column (JSON list of `{score, reason}` per candidate
    in the row's `candidates`, each against its `gold_calls` with its `tools`)."""
    scorer = _scorer()
    scores = []
    for cands, gold, tools in zip(
        batch["candidates"].to_pylist(),
        batch["gold_calls"].to_pylist(),
        batch["tools"].to_pylist(),
        strict=True,
    ):
        row_scores = []
        for c in json.loads(cands):
            cells = scorer.score_row(c["text"], gold, tools)
            row_scores.append({"score": cells[0], "reason": cells[6]})
        scores.append(json.dumps(row_scores))
    return batch.append_column("scores", pa.array(scores, type=pa.string()))


def _ok_rows(batch: pa.Table) -> pa.Table:
    return split_quarantine(batch, QUARANTINE_COL)[0].drop_columns([QUARANTINE_COL])


def _bad_rows(batch: pa.Table, id_col: str) -> pa.Table:
    bad = split_quarantine(batch, QUARANTINE_COL)[1]
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


def check_input(in_path: str | Path, columns: list[str]) -> None:
    """Raise before any Ray work when local `in_path` is missing, not Parquet, or lacks one
    of `columns` (a Parquet file or a directory of them; URIs are left to Ray)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    if is_uri(in_path):
        return
    path = Path(in_path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir() and not any(path.rglob("*.parquet")):
        raise ValueError(f"input directory {path} holds no .parquet files")
    try:
        if path.is_dir():
            names = pads.dataset(path, format="parquet").schema.names
        else:
            names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"input {path} is not readable as Parquet: {e}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(
            f"input {path} has no column(s) {', '.join(missing)} (it has: "
            f"{', '.join(names) or 'none'}); name them with --pred-col/--gold-col/--tools-col"
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
    overwrite: bool = False,
    **cols: str,
) -> StageCounts:
    """Score a Parquet dataset on Ray Data; write scored rows, quarantine and a manifest.

    Outputs: `out_path` (Parquet directory), `quarantine_path` (default
    `<out>.quarantine.parquet`, also a directory), `<out>.manifest.json`. Each is written
    to a temporary sibling and renamed into place at the end, replacing what an earlier
    run wrote there; a path holding data ttpa-ray did not write raises `OutDirError`
    before any work, unless `overwrite` (a directory is then moved aside, never deleted;
    see `ttpa_ray.outdir`). `pred_format`: what the pred column holds, "calls" or "text"
    (see `ESMBatchScorer`). Raises ValueError on empty input, missing columns or an
    unknown `pred_format`, and FileNotFoundError on a missing input.
    """
    if pred_format not in PRED_FORMATS:  # fail here, not inside every actor
        raise ValueError(f"unknown pred_format {pred_format!r}; expected one of {PRED_FORMATS}")
    out_path = Path(out_path)
    q_path = (
        Path(quarantine_path) if quarantine_path else out_path.with_suffix(".quarantine.parquet")
    )
    manifest_path = out_path.with_suffix(".manifest.json")
    if len({out_path.resolve(), q_path.resolve(), manifest_path.resolve()}) < 3:
        raise ValueError(f"score: output {out_path} and quarantine {q_path} must differ")
    # Every check before Ray starts: a bad input or a foreign output costs no cluster.
    check_input(in_path, [cols.get(f"{c}_col", c) for c in ("pred", "gold", "tools")])
    check_replaceable(out_path, overwrite=overwrite)
    check_replaceable(q_path, overwrite=overwrite)
    check_file_writable(manifest_path, overwrite=overwrite)

    import ray

    from ttpa_ray.ray_utils import init_ray

    init_ray()
    t0 = time.perf_counter()
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
    # Whole-directory replacement: appending to a previous run's files would duplicate
    # rows, and emptying the directory in place could delete files that are not ours.
    with replacing_dir(out_path, STAGE, overwrite=overwrite) as tmp:
        ok.write_parquet(str(tmp))
    with replacing_dir(q_path, STAGE, overwrite=overwrite) as tmp:
        bad.write_parquet(str(tmp))
    counts = StageCounts(STAGE, rows_in, ok.count(), bad.count(), time.perf_counter() - t0).check()
    with replacing_file(manifest_path, STAGE, overwrite=overwrite) as tmp:
        write_manifest(
            tmp,
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
