"""TPS on vLLM through Ray Data LLM: n-sample and token-level branching (DESIGN §5).

Same candidates as `hf_sampler`, computed as Ray Data LLM processor passes over request
rows (one vLLM request per row; Ray Data LLM keeps only `outputs[0]`, so `n` samples are
`n` rows with `n=1` and seeds `seed + sample_index`):

    n_sample:     render (n requests per turn) → "generate" → collect → regroup per turn
    branch, both: render (1 teacher-forced request per turn) → "gold" → expand (branch
                  points → 1 request per branch; `both` adds the n samples) → "generate"
                  → collect → regroup per turn

The "gold" pass submits prompt + gold ids with `max_tokens=1` and `prompt_logprobs=K`:
entry `len(prompt) + i` of vLLM's `prompt_logprobs` is the policy at gold token `i` (the
token itself plus the top-K, rank 1 = the policy's top-1). Each branch then decodes
greedily from `prompt + gold[:i] + [alt]`; with `enable_prefix_caching` vLLM reuses the
KV blocks of the prompt and gold prefix the requests share (requests with
`prompt_logprobs` do not read that cache: they need every prompt position's logits).

We render and tokenize ourselves (per-row tools, DESIGN §8): rows carry
`tokenized_prompt`. Every row goes through every pass: rows with nothing to generate
(quarantined turns, turns without branch points) carry a one-token dummy prompt with
`max_tokens=1` instead of a filter/union, which would execute the upstream passes twice.
A turn is never dropped: a template error, a prompt longer than `max_model_len` or an
engine error on any of its requests sets `_quarantine_reason` (and `candidates="[]"`).

`forward_tokens` counts what we asked vLLM for: the prompt tokens submitted plus the
tokens generated, over all of a turn's requests. vLLM's prefix cache computes fewer (the
shared prefixes once); the HF sampler counts tokens it actually forwarded.

Regrouping is a `groupby(turn id)`: an all-to-all barrier, so a turn's row comes out only
after the generate pass has seen every turn. Turn ids must be unique in the input.

The pure row builders and output parsing are in `vllm_rows`; the processors, the
per-process tokenizer and its eos / special ids come from the vLLM adapter
(`engines/vllm_engine.py`, shared with the `vllm` teacher). This module holds the
sampler's processor config, the batch tasks between passes and `vllm_sample`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ttpa_ray.config import SampleConfig
from ttpa_ray.engines.vllm_engine import (
    VLLMConfig,
    build_processor_config,
    dummy_prompt_ids,
    engine_kwargs,
    eos_ids,
    load_tokenizer,
    processor_factory,
    require_vllm,
    special_ids,
)
from ttpa_ray.sample.branch import top_width
from ttpa_ray.sample.vllm_rows import (
    GENERATE,
    GOLD,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    assemble_turn,
    collect_row,
    expand_gold_row,
    postprocess_row,
    preprocess_row,
    render_turn,
)
from ttpa_ray.schema.turns import SAMPLED_SCHEMA

VLLM_DEFAULT_MAX_LOGPROBS = 20  # vLLM rejects (prompt_)logprobs above its `max_logprobs`
_CPU_TASK = {"batch_format": "pyarrow", "num_cpus": 0.25}

ProcessorFactory = Callable[[str], Callable[[Any], Any]]

# The adapter's per-process loaders, bound to the sampler's rule: `policy` is a model
# directory, never fetched from the hub.
_tokenizer = functools.partial(load_tokenizer, local_files_only=True)
_eos = functools.partial(eos_ids, local_files_only=True)
_skip_special = functools.partial(special_ids, local_files_only=True)


# -- settings ---------------------------------------------------------------------------------


def vllm_config(cfg: SampleConfig) -> VLLMConfig:
    """The engine settings of the `vllm` sampler (`policy` is the model dir)."""
    if not cfg.policy:
        raise ValueError("engine vllm needs `policy` (the model directory)")
    return VLLMConfig.from_section(cfg, cfg.policy, batch_size=cfg.vllm_batch_size, dtype=cfg.dtype)


# -- Ray Data tasks ---------------------------------------------------------------------------


def _render_batch(batch: pa.Table, config_json: str) -> pa.Table:
    # A task, not an actor (nothing to hold between batches but the cached tokenizer).
    cfg = SampleConfig.model_validate_json(config_json)
    path = str(cfg.policy)
    tok, k = _tokenizer(path), top_width(cfg.branch, _skip_special(path))
    rows = [r for t in batch.to_pylist() for r in render_turn(t, tok, _eos(path), cfg, k)]
    return pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)


def _select(batch: pa.Table) -> list[dict[str, Any]]:
    # Only our scalar columns: vLLM's (metrics, token lists) need not survive to_pylist.
    names = [n for n in (*REQUEST_SCHEMA.names, "__inference_error__") if n in batch.column_names]
    return batch.select(names).to_pylist()


def _expand_batch(batch: pa.Table, config_json: str) -> pa.Table:
    cfg = SampleConfig.model_validate_json(config_json)
    path = str(cfg.policy)
    skip, dummy = _skip_special(path), dummy_prompt_ids(_tokenizer(path))
    rows = [r for row in _select(batch) for r in expand_gold_row(row, cfg, skip, dummy)]
    return pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)


def _collect_batch(batch: pa.Table, policy: str) -> pa.Table:
    tok, eos = _tokenizer(policy), _eos(policy)
    rows = [collect_row(r, tok, eos) for r in _select(batch)]
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _assemble_group(group: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([assemble_turn(group.to_pylist())], schema=SAMPLED_SCHEMA)


def processor_config(cfg: SampleConfig, k: int) -> Any:
    """The `vLLMEngineProcessorConfig` of both passes: engine errors become row errors
    (the turn is quarantined), and `max_logprobs` admits the gold pass's
    `prompt_logprobs=k`. Constructible without vLLM."""
    vcfg = vllm_config(cfg)
    kwargs = {**engine_kwargs(vcfg), "max_logprobs": max(VLLM_DEFAULT_MAX_LOGPROBS, k)}
    return build_processor_config(vcfg, should_continue_on_error=True, engine_kwargs=kwargs)


def default_processor_factory(cfg: SampleConfig) -> ProcessorFactory:
    """`name → processor`: Ray Data LLM vLLM processors for `cfg` (needs vLLM)."""
    require_vllm()  # before loading the tokenizer: the install hint comes first
    k = top_width(cfg.branch, _skip_special(str(cfg.policy)))
    return processor_factory(processor_config(cfg, k), preprocess_row, postprocess_row)


def vllm_sample(
    ds: Any, cfg: SampleConfig, processor_factory: ProcessorFactory | None = None
) -> Any:
    """TPS candidates for TURN rows → SAMPLED rows, one per turn (see the module docstring).

    `processor_factory(name)` (`name`: "gold" or "generate") returns a processor
    (`Dataset → Dataset`) applying `preprocess_row`, the engine and `postprocess_row`;
    by default Ray Data LLM vLLM processors built from `cfg`.
    """
    if not cfg.policy:
        raise ValueError("engine vllm needs `policy` (the model directory)")
    factory = processor_factory or default_processor_factory(cfg)
    config_json = cfg.model_dump_json()
    ds = ds.map_batches(_render_batch, fn_args=(config_json,), **_CPU_TASK)
    if cfg.mode != "n_sample":
        ds = factory(GOLD)(ds)
        ds = ds.map_batches(_expand_batch, fn_args=(config_json,), **_CPU_TASK)
    ds = factory(GENERATE)(ds)
    ds = ds.map_batches(_collect_batch, fn_args=(str(cfg.policy),), **_CPU_TASK)
    return ds.groupby("_turn_id").map_groups(_assemble_group, **_CPU_TASK)


__all__ = [
    "ProcessorFactory",
    "VLLM_DEFAULT_MAX_LOGPROBS",
    "default_processor_factory",
    "processor_config",
    "vllm_config",
    "vllm_sample",
]
