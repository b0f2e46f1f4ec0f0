"""TPS on Ray Data: turns → candidates (actor pool) → ESM (map) → pairs (map), resumable.

The driver splits the episodes into shards and extracts their turns (pure, cheap; turns
that cannot be prompts are quarantined there). Every pending shard's turns then stream
through one Ray Data execution, so a policy is loaded once per actor per run:

    sampler actors (hf: HFSampler, openai: OpenAISampler; vllm: Ray Data LLM processors)
      → ESM map stage (scores every candidate against the gold call)
      → pair map stage (the pair rule)

Each shard is written the moment its last turn is out (with vLLM, whose passes regroup
requests per turn, after the last pass), with `_SUCCESS` (and the resume key) last, as
`ttpa_ray.runner` describes; a re-run with unchanged config, policy and episodes skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ttpa_ray import runner, storage
from ttpa_ray.atomic import write_atomic
from ttpa_ray.config import SampleConfig
from ttpa_ray.ray_utils import remote_args
from ttpa_ray.sample.candidates import Candidate, dedupe
from ttpa_ray.sample.pairs import ScoredCandidate, pair_rows, to_sharegpt, to_trl
from ttpa_ray.schema.io import (
    StageCounts,
    config_hash,
    content_fingerprint,
    model_dir_id,
    read_table,
    write_manifest,
    write_rows,
)
from ttpa_ray.schema.records import PAIR_SCHEMA, QUARANTINE_SCHEMA, QuarantineRecord
from ttpa_ray.schema.turns import (
    SAMPLED_SCHEMA,
    TURN_SCHEMA,
    PromptFit,
    Turn,
    episode_turns,
)
from ttpa_ray.score.stage import score_candidates

STAGE = "sample"
SCORED_SCHEMA = SAMPLED_SCHEMA.append(pa.field("scores", pa.string()))
PAIRED_SCHEMA = SCORED_SCHEMA.append(pa.field("pairs", pa.string()))
CANDIDATE_SCHEMA = pa.schema(
    [
        ("turn_id", pa.string()),
        ("episode_id", pa.string()),
        ("turn_index", pa.int32()),
        ("source", pa.string()),
        ("branch_token_index", pa.int32()),
        ("text", pa.string()),
        ("logprob", pa.float64()),
        ("esm_score", pa.float64()),
        ("esm_reason", pa.string()),
    ]
)


# -- sampler actors ---------------------------------------------------------------------------


def _sampled(row: dict[str, Any], cands: list[Candidate], gold_ids: Any, tokens: int) -> dict:
    return {
        **row,
        "candidates": json.dumps([c.to_dict() for c in dedupe(cands)], ensure_ascii=False),
        "gold_ids": json.dumps(gold_ids) if gold_ids is not None else None,
        "forward_tokens": tokens,
        "_quarantine_reason": None,
    }


def _failed(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        **row,
        "candidates": "[]",
        "gold_ids": None,
        "forward_tokens": 0,
        "_quarantine_reason": reason,
    }


class SamplerStage:
    """A Ray Data actor holding one policy (an HF model or an HTTP client): TURN rows in,
    SAMPLED rows out, one per turn; a turn the engine cannot serve is marked, not raised."""

    def __init__(self, config_json: str) -> None:
        self.cfg = SampleConfig.model_validate_json(config_json)
        if self.cfg.engine == "hf":
            from ttpa_ray.engines.hf_engine import HFEngine
            from ttpa_ray.sample.hf_sampler import HFSampler

            engine = HFEngine(
                str(self.cfg.policy),
                device=self.cfg.device,
                dtype=self.cfg.dtype,
                max_prompt_tokens=self.cfg.max_prompt_tokens,
            )
            self.hf = HFSampler(engine, self.cfg)
        else:
            from ttpa_ray.sample.openai_sampler import OpenAISampler

            self.openai = OpenAISampler(self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = []
        if self.cfg.engine == "openai":
            results = self.openai.sample([Turn.from_row(r) for r in rows])
            for row, res in zip(rows, results, strict=True):
                if isinstance(res, Exception):
                    out.append(_failed(row, f"engine_error: {res}"))
                else:
                    out.append(_sampled(row, res[0], None, res[1]))
        else:
            from ttpa_ray.engines.base import EngineError

            for row in rows:
                try:
                    got = self.hf.sample(Turn.from_row(row), self.cfg.mode)
                except EngineError as exc:
                    out.append(_failed(row, f"engine_error: {exc}"))
                    continue
                ids = self.hf.train_ids(row["gold_text"])
                out.append(_sampled(row, got.candidates, ids, got.forward_tokens))
        return pa.Table.from_pylist(out, schema=SAMPLED_SCHEMA)


# -- pair map stage (the ESM stage before it: score.stage.score_candidates) -----------------


def pair_batch(batch: pa.Table, threshold: float) -> pa.Table:
    """Pair map stage: a `pairs` column (JSON list of PAIR_SCHEMA rows per turn)."""
    pairs = []
    for row in batch.to_pylist():
        if row["_quarantine_reason"] is not None:
            pairs.append("[]")
            continue
        scored = [
            ScoredCandidate(Candidate.from_dict(c), s["score"], s["reason"] or "")
            for c, s in zip(json.loads(row["candidates"]), json.loads(row["scores"]), strict=True)
        ]
        gold_ids = json.loads(row["gold_ids"]) if row["gold_ids"] else None
        pairs.append(json.dumps(pair_rows(row, scored, threshold, gold_ids), ensure_ascii=False))
    return batch.append_column("pairs", pa.array(pairs, type=pa.string()))


def build_dataset(cfg: SampleConfig, turns: pa.Table, processor_factory: Any = None) -> Any:
    """The Ray Data pipeline over TURN rows; yields PAIRED rows, one per turn."""
    import ray

    block = max(1, min(cfg.batch_size * 4, -(-turns.num_rows // max(1, 2 * cfg.workers))))
    ds: Any = ray.data.from_arrow([turns.slice(i, block) for i in range(0, turns.num_rows, block)])
    if cfg.engine == "vllm":
        from ttpa_ray.sample.vllm_sampler import vllm_sample

        ds = vllm_sample(ds, cfg, processor_factory)
    else:
        ds = ds.map_batches(
            SamplerStage,
            fn_constructor_args=(cfg.model_dump_json(),),
            compute=ray.data.ActorPoolStrategy(size=cfg.workers),
            batch_size=cfg.batch_size,
            **remote_args(cfg.num_cpus, cfg.num_gpus, cfg.accelerator_type, cfg.resources),
            batch_format="pyarrow",
        )
    # Light CPU stages (fused into one task per block).
    light = {"batch_format": "pyarrow", "num_cpus": 0.25}
    ds = ds.map_batches(score_candidates, **light)
    return ds.map_batches(pair_batch, fn_args=(cfg.threshold,), **light)


# -- driver -----------------------------------------------------------------------------------


def resolve_episodes(path: str | Path, split: str) -> Path:
    """A construct out dir (→ `episodes/<split>.parquet`), or a Parquet file/dir."""
    p = Path(path)
    candidate = p / "episodes" / f"{split}.parquet"
    if candidate.exists():
        return candidate
    if p.is_file() or (p.is_dir() and any(p.glob("*.parquet"))):
        return p
    raise FileNotFoundError(
        f"no episodes at {p}: expected a construct out dir with episodes/{split}.parquet, "
        "or a Parquet file"
    )


def _policy_id(cfg: SampleConfig) -> str:
    """What identifies the policy: a model dir by `model_dir_id`, an endpoint (or a URI)
    by URL and model name."""
    p = Path(str(cfg.policy))
    if cfg.engine != "openai" and p.is_dir():
        return model_dir_id(p)
    return f"{cfg.policy}|{cfg.model}"


def _check_inputs(cfg: SampleConfig) -> None:
    if not cfg.policy:
        raise ValueError("sample.policy: set the policy (a model dir, or a base URL for openai)")
    if cfg.engine != "openai" and not (
        storage.exists(cfg.policy) if storage.is_uri(cfg.policy) else Path(cfg.policy).is_dir()
    ):
        raise FileNotFoundError(f"sample.policy: model directory {cfg.policy} does not exist")
    if cfg.engine == "openai" and cfg.api_key_env and cfg.api_key_env not in os.environ:
        raise ValueError(f"sample.api_key_env: environment variable {cfg.api_key_env} is not set")


def sampled_turns(cfg: SampleConfig, episodes: str | Path) -> list[dict[str, Any]]:
    """The turn rows `run_sample` samples for `cfg` (same episodes, builder and fit),
    without sampling: what a baseline built from its candidates needs (the gold turn)."""
    table = read_table(resolve_episodes(episodes, cfg.split))
    if cfg.max_episodes is not None:
        table = table.slice(0, cfg.max_episodes)
    rows, _, _ = _shard_turns(table.to_pylist(), 0, cfg, prompt_fit(cfg))
    return rows


def _shard_turns(
    episodes: list[dict[str, Any]], shard: int, cfg: SampleConfig, fit: PromptFit | None
) -> tuple[list[dict[str, Any]], list[QuarantineRecord], int]:
    rows, bad, found = [], [], 0
    for ep in episodes:
        turns, q = episode_turns(ep, cfg.max_turns_per_episode, cfg.distractors, fit)
        rows += [{**t.to_row(), "shard": shard} for t in turns]
        bad += q
        found += len(turns) + len(q)
    return rows, bad, found


def run_sample(
    cfg: SampleConfig,
    episodes: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    stop_after_shards: int | None = None,
    processor_factory: Any = None,
) -> dict[str, Any]:
    """Sample candidates, score them and build pairs into `out`; resume finished shards.

    Writes `out/pairs.parquet`, `out/candidates.parquet` (every scored candidate),
    `out/quarantine.parquet`, `out/export/{trl,sharegpt}.jsonl` and `out/manifest.json`
    (returned). Raises ValueError on empty input or when no turn could be sampled.
    """
    from ttpa_ray.ray_utils import init_ray

    t0 = time.perf_counter()
    out = Path(out)
    _check_inputs(cfg)
    src = resolve_episodes(episodes, cfg.split)
    table = read_table(src)
    if cfg.max_episodes is not None:
        table = table.slice(0, cfg.max_episodes)
    if table.num_rows == 0:
        raise ValueError(f"sample: no episodes in {src}")
    key = config_hash(
        {
            "cfg": cfg.model_dump(exclude={"workers", "num_cpus", "batch_size", "shard_size"}),
            "policy": _policy_id(cfg),
            "episodes": content_fingerprint(src),
        }
    )
    fit = prompt_fit(cfg)  # over-long prompts omit old tool results, as in SFT and eval
    starts = range(0, table.num_rows, cfg.shard_size)
    sizes = [min(cfg.shard_size, table.num_rows - start) for start in starts]

    by_index: dict[int, runner.Shard] = {}  # a turn row's `shard` column → its shard

    def shard(k: int, path: Path) -> runner.Shard:
        # the payload: (turn rows, turns quarantined in the driver, turns found)
        turns = _shard_turns(table.slice(starts[k], sizes[k]).to_pylist(), k, cfg, fit)
        by_index[k] = runner.Shard(path, len(turns[0]), turns)
        return by_index[k]

    paths = [out / "shards" / f"shard-{st:08d}-{n}" for st, n in zip(starts, sizes, strict=True)]
    plan = runner.ShardPlan.make(key, paths, shard)
    bar = plan.progress("sample shards", progress)
    ran = 0
    # Shards without a single turn to sample are finished in the driver.
    streamed = [s for s in plan.pending if s.rows]
    for s in plan.pending:
        if not s.rows:
            _write_shard(s, pa.Table.from_pylist([], schema=PAIRED_SCHEMA), key)
            ran += 1
            bar.update(1)
    if streamed and (stop_after_shards is None or ran < stop_after_shards):
        init_ray()
        turns = pa.Table.from_pylist(
            [r for s in streamed for r in s.payload[0]], schema=TURN_SCHEMA
        )
        ds = build_dataset(cfg, turns, processor_factory)

        def write(s: runner.Shard, done: pa.Table) -> None:
            n_pairs = _write_shard(s, done.sort_by("id"), key)
            bar.update(1)
            bar.set_postfix(pairs=n_pairs)

        ran += runner.stream(
            ds.iter_batches(batch_format="pyarrow", batch_size=None),
            lambda batch: [by_index[k] for k in batch["shard"].to_pylist()],
            write,
            None if stop_after_shards is None else stop_after_shards - ran,
        )
    bar.close()
    return plan.interrupted(ran) or _finalize(cfg, src, out, plan, ran, time.perf_counter() - t0)


def _candidate_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows = []
    for r in table.select(["id", "episode_id", "turn_index", "candidates", "scores"]).to_pylist():
        for c, s in zip(json.loads(r["candidates"]), json.loads(r["scores"]), strict=True):
            rows.append(
                {
                    "turn_id": r["id"],
                    "episode_id": r["episode_id"],
                    "turn_index": r["turn_index"],
                    "source": c["source"],
                    "branch_token_index": c["branch_token_index"],
                    "text": c["text"],
                    "logprob": c.get("logprob"),
                    "esm_score": s["score"],
                    "esm_reason": s["reason"],
                }
            )
    return rows


def _write_shard(shard: runner.Shard, table: pa.Table, key: str) -> int:
    """A finished shard: pairs, scored candidates, quarantine and counts, written by
    `runner.write_shard`. → its pairs."""
    _, bad, found = shard.payload
    ok, failed = runner.split_quarantine(table)
    pairs = [p for s in ok["pairs"].to_pylist() for p in json.loads(s)]
    cands = _candidate_rows(ok)
    q = [r.to_row() for r in bad]
    for r in failed.select(TURN_SCHEMA.names + ["_quarantine_reason"]).to_pylist():
        reason = r.pop("_quarantine_reason")
        q.append(QuarantineRecord.of(f"{STAGE}.candidates", r["id"], reason, r).to_row())
    paired_turns = len({p["id"].rsplit(":p", 1)[0] for p in pairs})
    counts = {
        "turns": StageCounts(f"{STAGE}.turns", found, table.num_rows, len(bad)),
        "candidates": StageCounts(
            f"{STAGE}.candidates", table.num_rows, ok.num_rows, failed.num_rows
        ),
        "score": StageCounts(f"{STAGE}.score", len(cands), len(cands), 0),
        "pairs": StageCounts(f"{STAGE}.pairs", ok.num_rows, ok.num_rows, 0),
    }
    by_source = Counter(p["source"] for p in pairs)
    extra = {
        "pairs": len(pairs),
        "pairs_by_source": dict(by_source),
        "turns_with_pairs": paired_turns,
        "forward_tokens": int(pc.sum(ok["forward_tokens"]).as_py() or 0),
        "candidates_by_source": dict(Counter(c["source"] for c in cands)),
    }
    runner.write_shard(
        shard.path,
        key,
        {
            "pairs.parquet": (pairs, PAIR_SCHEMA),
            "candidates.parquet": (cands, CANDIDATE_SCHEMA),
            "quarantine.parquet": (q, QUARANTINE_SCHEMA),
        },
        {"counts": {k: c.__dict__ for k, c in counts.items()}, **extra},
    )
    return len(pairs)


_TOKENIZER_FILES = (
    "config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def _divergence(cfg: SampleConfig, pairs: pa.Table) -> dict[str, Any]:
    """`branch_divergence`: where branch pairs diverge, by token class (`token_classes`).

    Needs the policy's tokenizer: for a URI policy only its tokenizer files are fetched,
    not the weights. A diagnostic, so a tokenizer that will not load is recorded as
    `branch_divergence_error` rather than failing a finished run.
    """
    from ttpa_ray.schema.token_classes import branch_divergence

    rows = pairs.select(["source", "branch_token_index", "chosen_text"]).to_pylist()
    if not any(r["source"] == "branch" and r["branch_token_index"] >= 0 for r in rows):
        return {}
    try:
        tok = policy_tokenizer(str(cfg.policy))
    except Exception as exc:
        return {"branch_divergence_error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"branch_divergence": branch_divergence(rows, tok)}


def policy_tokenizer(path: str) -> Any:
    """The tokenizer of a model dir or URI (for a URI only the tokenizer files are
    fetched, into the per-node cache), for the driver-side steps that count tokens."""
    from transformers import AutoTokenizer

    if storage.is_uri(path):
        key = hashlib.sha256(path.encode()).hexdigest()[:16]
        local = storage.cache_root() / f"tokenizer-{key}"
        for name in _TOKENIZER_FILES:
            storage.download(storage.join(path, name), local / name)
        path = str(local)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def prompt_fit(cfg: SampleConfig) -> PromptFit | None:
    """The prompt budget `sample.max_prompt_tokens` in the policy's tokens (None: unset,
    or an openai policy, whose tokenizer is not ours to load)."""
    if cfg.max_prompt_tokens is None or cfg.engine == "openai" or not cfg.policy:
        return None
    return PromptFit.for_tokenizer(policy_tokenizer(str(cfg.policy)), cfg.max_prompt_tokens)


def _finalize(
    cfg: SampleConfig,
    src: Path,
    out: Path,
    plan: runner.ShardPlan,
    ran: int,
    seconds: float,
) -> dict[str, Any]:
    pairs = runner.concat(plan.paths, "pairs.parquet")
    cands = runner.concat(plan.paths, "candidates.parquet")
    quarantine = runner.concat(plan.paths, "quarantine.parquet")
    per_shard = runner.read_counts(plan.paths)
    totals = runner.merge_counts(data["counts"] for data in per_shard)
    extra: dict[str, Any] = {"pairs_by_source": Counter(), "candidates_by_source": Counter()}
    for data in per_shard:
        for k, v in data.items():
            if k == "counts":
                continue
            if isinstance(v, dict):
                extra[k].update(v)
            else:
                extra[k] = extra.get(k, 0) + v
    counts = list(totals.values())
    write_rows(out / "quarantine.parquet", quarantine.to_pylist(), QUARANTINE_SCHEMA)
    write_rows(out / "candidates.parquet", cands.to_pylist(), CANDIDATE_SCHEMA)
    reasons = Counter(r.split(":")[0] for r in quarantine["reason"].to_pylist())
    manifest_extra = {
        "engine": cfg.engine,
        "mode": cfg.mode,
        "policy": cfg.policy,
        "episodes": str(src),
        "resume_key": plan.key,
        "shards_run": ran,
        "shards_skipped": plan.skipped,
        "seconds": round(seconds, 2),
        "quarantine_reasons": dict(reasons),
        **{k: dict(v) if isinstance(v, Counter) else v for k, v in extra.items()},
    }
    if extra["pairs"]:
        manifest_extra["forward_tokens_per_pair"] = round(
            extra["forward_tokens"] / extra["pairs"], 1
        )
    if cands.num_rows:
        manifest_extra["mean_candidate_esm"] = round(pc.mean(cands["esm_score"]).as_py(), 4)
        # How often the pair rule chose a sample rather than gold (DESIGN §5), over every
        # sampled turn (one without candidates has no best sample).
        best = cands.group_by("turn_id").aggregate([("esm_score", "max")])["esm_score_max"]
        at = int(pc.sum(pc.greater_equal(best, cfg.threshold)).as_py() or 0)
        manifest_extra["turns_best_at_threshold"] = at
        manifest_extra["best_at_threshold_share"] = round(at / totals["candidates"].rows_out, 4)
    manifest_extra |= _divergence(cfg, pairs)
    if pairs.num_rows == 0:
        write_manifest(out, counts, config=cfg.model_dump(mode="json"), extra=manifest_extra)
        top = ", ".join(f"{k} ×{v}" for k, v in reasons.items()) or "every turn scored alike"
        first = quarantine["reason"][0].as_py()[:300] if quarantine.num_rows else ""
        raise ValueError(
            f"sample: no preference pairs from {src} ({top}); see {out}/quarantine.parquet"
            + (f"; first: {first}" if first else "")
        )
    rows = pairs.to_pylist()
    write_rows(out / "pairs.parquet", rows, PAIR_SCHEMA)
    export = out / "export"
    export.mkdir(parents=True, exist_ok=True)
    for name, fn in (("trl", to_trl), ("sharegpt", to_sharegpt)):
        with (export / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(fn(r), ensure_ascii=False) + "\n")
    write_atomic(out / "config.resolved.json", cfg.model_dump_json(indent=2))
    path = write_manifest(out, counts, config=cfg.model_dump(mode="json"), extra=manifest_extra)
    return json.loads(path.read_text())
