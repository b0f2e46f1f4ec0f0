"""Reversed construction on Ray Data: resumable shards, split, card, manifest.

Each shard (a range of seeds) streams through one Ray Data pipeline of four
`map_batches` stages (scene → trajectory → answer → query) and a finishing stage that
assembles and validates episodes. Shards resume as `ttpa_ray.runner` describes (`_SUCCESS`
with the config hash, written last); after the last shard the episodes are split and
described.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from ttpa_ray import runner
from ttpa_ray.atomic import write_atomic
from ttpa_ray.config import ConstructConfig
from ttpa_ray.construct.dataset import (
    SPLITS,
    episode_stats,
    pick_holdout_tools,
    split_rows,
    write_card,
)
from ttpa_ray.construct.steps import (
    OUT_SCHEMA,
    ROW_SCHEMA,
    STEPS,
    finish_row,
    make_teacher,
    step_rows,
)
from ttpa_ray.ray_utils import remote_args
from ttpa_ray.schema.io import StageCounts, config_hash, write_manifest, write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA, QUARANTINE_SCHEMA

log = logging.getLogger("ttpa_ray")
STAGE = "construct"


@cache
def _teacher(config_json: str) -> Any:
    # One teacher (and catalog) per worker process, reused across batches and steps.
    # No engine: these workers run the schema teacher or only assemble episodes.
    return make_teacher(json.loads(config_json), with_engine=False)


def _step_batch(batch: pa.Table, step: str, config_json: str) -> pa.Table:
    teacher = _teacher(config_json)
    rows = step_rows(teacher, step, batch.to_pylist())
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _finish_batch(batch: pa.Table, config_json: str) -> pa.Table:
    teacher = _teacher(config_json)
    return pa.Table.from_pylist(
        [finish_row(teacher, r) for r in batch.to_pylist()], schema=OUT_SCHEMA
    )


class LLMStepStage:
    """One construction step as a Ray Data actor: the engine (an HF model, or an HTTP
    client) is built once per actor and serves every batch. With `finish`, the actor
    also assembles and validates the episodes (the last step), so no extra CPU-holding
    stage competes with the actor pools on a small machine."""

    def __init__(self, step: str, config_json: str, finish: bool = False) -> None:
        self.step, self.finish = step, finish
        self.teacher = make_teacher(json.loads(config_json))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = step_rows(self.teacher, self.step, batch.to_pylist())
        if self.finish:
            return pa.Table.from_pylist([finish_row(self.teacher, r) for r in rows], OUT_SCHEMA)
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _shard_key(cfg: ConstructConfig) -> str:
    """What a shard's content depends on (not n_episodes, workers or CPUs)."""
    return config_hash(cfg.model_dump(exclude={"n_episodes", "workers", "num_cpus", "split"}))


def build_dataset(
    cfg: ConstructConfig, shards: list[list[int]], processor_factory: Any = None
) -> Any:
    """The Ray Data pipeline constructing the episodes of `shards` (lists of seeds).

    Input blocks never straddle two shards, so shards finish roughly in order and each
    can be written as soon as its last row is out. `processor_factory(step, attempt)` (vllm
    only) builds the processor of a step; the default is a Ray Data LLM vLLM processor.
    """
    import ray

    config_json = cfg.model_dump_json()
    total = sum(len(s) for s in shards)
    # Enough blocks for `workers` tasks at once, small enough to stream shard by shard.
    block_rows = max(1, min(cfg.shard_size, -(-total // (2 * cfg.workers)), 500))
    blocks = []
    for seeds in shards:
        rows = [{"id": f"ep-{s:08d}", "seed": s} for s in seeds]
        table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
        blocks += [table.slice(i, block_rows) for i in range(0, len(rows), block_rows)]
    ds: Any = ray.data.from_arrow(blocks)
    kind = cfg.teacher.kind
    if kind == "schema":
        # Task-based stages: the schema teacher is cheap to build (cached per worker) and
        # consecutive task stages fuse into one task per block.
        remote: dict[str, Any] = {
            "compute": ray.data.TaskPoolStrategy(size=cfg.workers),
            "batch_format": "pyarrow",
            **remote_args(cfg.num_cpus, resources=cfg.resources),
        }
        for name in STEPS:
            ds = ds.map_batches(_step_batch, fn_args=(name, config_json), **remote)
        ds = ds.map_batches(_finish_batch, fn_args=(config_json,), **remote)
    elif kind == "vllm":
        from ttpa_ray.construct.vllm_stage import vllm_steps

        ds = vllm_steps(ds, cfg, processor_factory)
        ds = ds.map_batches(
            _finish_batch,
            fn_args=(config_json,),
            compute=ray.data.TaskPoolStrategy(size=cfg.workers),
            batch_format="pyarrow",
            **remote_args(cfg.num_cpus, resources=cfg.resources),
        )
    else:
        # hf / openai: an actor pool per step (`workers` actors each).
        for name in STEPS:
            ds = ds.map_batches(
                LLMStepStage,
                fn_constructor_args=(name, config_json, name == STEPS[-1]),
                compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                batch_size=cfg.teacher.batch_size,
                **remote_args(
                    cfg.num_cpus,
                    cfg.teacher.num_gpus,
                    cfg.teacher.accelerator_type,
                    cfg.resources,
                ),
                batch_format="pyarrow",
            )
    return ds


def run_shard(cfg: ConstructConfig, seeds: list[int], processor_factory: Any = None) -> pa.Table:
    """Construct the episodes of `seeds`: one OUT_SCHEMA row per seed, sorted by seed."""
    import ray

    ds = build_dataset(cfg, [seeds], processor_factory)
    return pa.concat_tables([ray.get(ref) for ref in ds.to_arrow_refs()]).sort_by("seed")


def _step_counts(table: pa.Table) -> list[StageCounts]:
    """rows_in/out/quarantined per step, from where each row failed (if it did)."""
    failed = table["_failed_step"].to_pylist()
    seconds = [json.loads(s) if s else {} for s in table["_seconds"].to_pylist()]
    counts, alive = [], table.num_rows
    for name in (*STEPS, "assemble", "validate"):
        q = sum(1 for f in failed if f == name)
        secs = sum(s.get(name, 0.0) for s in seconds)
        counts.append(StageCounts(f"{STAGE}.{name}", alive, alive - q, q, round(secs, 3)))
        alive -= q
    return counts


def _quarantine_rows(bad: pa.Table) -> list[dict[str, Any]]:
    return [
        {
            "stage": f"{STAGE}.{r['_failed_step']}",
            "row_id": r["id"],
            "reason": r["_quarantine_reason"],
            "raw": r["_raw"],
        }
        for r in bad.select(["id", "_failed_step", "_quarantine_reason", "_raw"]).to_pylist()
    ]


def run_construct(
    cfg: ConstructConfig,
    out: str | Path,
    *,
    stop_after_shards: int | None = None,
    progress: bool = True,
    processor_factory: Any = None,
) -> dict[str, Any]:
    """Build `cfg.n_episodes` episodes into `out`, resuming finished shards.

    `stop_after_shards` stops after running that many shards (for tests of resume: the
    effect of an interrupted run). Returns the manifest (also written to
    `out/manifest.json`); raises ValueError when no episode survives.
    """
    from ttpa_ray.ray_utils import init_ray

    out = Path(out)
    t0 = time.perf_counter()
    _check_inputs(cfg)
    seeds = [
        [cfg.seed + i for i in range(start, min(start + cfg.shard_size, cfg.n_episodes))]
        for start in range(0, cfg.n_episodes, cfg.shard_size)
    ]
    plan = runner.ShardPlan.make(
        _shard_key(cfg),
        [out / "shards" / f"shard-{s[0]:08d}-{len(s)}" for s in seeds],
        lambda i, path: runner.Shard(path, len(seeds[i]), seeds[i]),
    )
    bar = plan.progress("construct shards", progress)
    ran = 0
    if plan.pending and stop_after_shards != 0:
        # One streaming execution for every pending shard: LLM teachers load their model
        # (or start their engines) once per run, not once per shard; each shard is written
        # the moment its last row is out, so an interrupted run keeps every finished shard.
        init_ray()
        ds = build_dataset(cfg, [s.payload for s in plan.pending], processor_factory)
        shard_of = {seed: s for s in plan.pending for seed in s.payload}

        def write(shard: runner.Shard, table: pa.Table) -> None:
            kept = _write_shard(shard, table.sort_by("seed"), plan.key)
            bar.update(1)
            bar.set_postfix(episodes=kept, quarantined=table.num_rows - kept)

        ran = runner.stream(
            ds.iter_batches(batch_format="pyarrow", batch_size=None),
            lambda batch: [shard_of[int(seed)] for seed in batch["seed"].to_pylist()],
            write,
            stop_after_shards,
        )
    bar.close()
    return plan.interrupted(ran) or _finalize(cfg, out, plan, ran, time.perf_counter() - t0)


def _write_shard(shard: runner.Shard, table: pa.Table, key: str) -> int:
    """A finished shard's episodes, quarantine and counts (`runner.write_shard`). → kept rows."""
    ok, bad = runner.split_quarantine(table)
    seeds = shard.payload
    runner.write_shard(
        shard.path,
        key,
        {
            "episodes.parquet": (ok.select(EPISODE_SCHEMA.names).to_pylist(), EPISODE_SCHEMA),
            "quarantine.parquet": (_quarantine_rows(bad), QUARANTINE_SCHEMA),
        },
        [c.__dict__ for c in _step_counts(table)],
        seeds=[seeds[0], seeds[-1]],
    )
    return ok.num_rows


def _check_inputs(cfg: ConstructConfig) -> None:
    """Fail in the driver, with a clear message, on what every worker would fail on."""
    from ttpa_ray.tools.catalog import catalog_tools

    tools = catalog_tools(cfg.catalog)  # FileNotFoundError / ValueError naming the file
    if len(tools) < cfg.n_tools[0]:
        log.warning(
            "catalog %r has %d tools, fewer than n_tools min %d: scenes offer all of them",
            cfg.catalog,
            len(tools),
            cfg.n_tools[0],
        )
    t = cfg.teacher
    if t.kind == "hf" and not Path(str(t.model)).is_dir():
        raise FileNotFoundError(f"teacher.model: model directory {t.model} does not exist")
    if t.kind == "openai" and t.api_key_env and t.api_key_env not in os.environ:
        raise ValueError(f"teacher.api_key_env: environment variable {t.api_key_env} is not set")


def _finalize(
    cfg: ConstructConfig, out: Path, plan: runner.ShardPlan, ran: int, seconds: float
) -> dict[str, Any]:
    episodes = runner.concat(plan.paths, "episodes.parquet")
    quarantine = runner.concat(plan.paths, "quarantine.parquet")
    per_step = runner.read_counts(plan.paths)
    counts = list(runner.merge_counts({c["stage"]: c for c in s} for s in per_step).values())
    total = StageCounts(
        STAGE, cfg.n_episodes, episodes.num_rows, quarantine.num_rows, round(seconds, 2)
    ).check()
    write_rows(out / "quarantine.parquet", quarantine.to_pylist(), QUARANTINE_SCHEMA)
    if episodes.num_rows == 0:
        # The accounting is still written: it is what tells the user why.
        write_manifest(
            out,
            [total, *counts],
            config=cfg.model_dump(mode="json"),
            extra={
                "quarantined": quarantine.num_rows,
                "quarantine_reasons": _reason_counts(quarantine),
            },
        )
        top = ", ".join(f"{k} ×{v}" for k, v in _reason_counts(quarantine).items())
        raise ValueError(
            f"construct: all {cfg.n_episodes} episodes were quarantined ({top}); "
            f"see {out}/quarantine.parquet"
        )
    rows = episodes.to_pylist()
    holdout = pick_holdout_tools(rows, cfg.split.holdout_tools, cfg.seed)
    splits = split_rows(rows, cfg.split.val, cfg.split.test, holdout)
    for name in SPLITS:
        write_rows(out / "episodes" / f"{name}.parquet", splits[name], EPISODE_SCHEMA)
    stats = episode_stats(rows)
    extra = {
        "teacher": cfg.teacher.kind,
        "catalog": cfg.catalog,
        "shard_key": plan.key,
        "shards_run": ran,
        "shards_skipped": plan.skipped,
        "splits": {s: len(splits[s]) for s in SPLITS},
        "holdout_tools": holdout,
        "quarantined": quarantine.num_rows,
        "quarantine_reasons": _reason_counts(quarantine),
        "stats": {k: v for k, v in stats.items() if k != "tool_counts"},
    }
    path = write_manifest(out, [total, *counts], config=cfg.model_dump(mode="json"), extra=extra)
    manifest = json.loads(path.read_text())
    write_card(out, stats, manifest)
    write_atomic(out / "config.resolved.json", cfg.model_dump_json(indent=2))
    return manifest


def _reason_counts(quarantine: pa.Table) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for r in quarantine["reason"].to_pylist():
        head = r.split(":")[0] + ":" + r.split(":")[1] if r.count(":") >= 1 else r
        reasons[head] = reasons.get(head, 0) + 1
    return reasons
