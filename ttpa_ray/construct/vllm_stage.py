"""The `vllm` teacher: each construction step as a Ray Data LLM processor (CUDA + vLLM).

Per step and attempt: `RenderPrompts` (a task with the cached tokenizer: our own chat-template
rendering, since Ray Data LLM does not pass a row's tools to its template) → a vLLM
processor (the adapter `engines/vllm_engine.py`, shared with TPS) → ``parse_row``
(validation, repair bookkeeping, quarantine). Attempt 2 is the repair round
(`teacher.repair`): only rows whose first reply was unusable are generated again, with
their errors in the conversation.

Every row goes through every processor (Ray Data LLM keeps one output row per input row);
rows with nothing to generate (already discarded, or already valid) carry a one-token
dummy prompt with `max_tokens=1`, which costs a negligible prefill, instead of a
filter/union that would re-execute the upstream stages.

GPU budget: the steps' processors stream concurrently and each autoscales from 1 to
`concurrency` engine replicas, so a run holds between `4 × (2 if repair else 1)` and that
times `concurrency` replicas of `tensor_parallel_size` GPUs; on a small cluster keep
`concurrency: 1` and consider `repair: false`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ttpa_ray.config import ConstructConfig
from ttpa_ray.construct.rows import fail
from ttpa_ray.construct.schema_teacher import Restart
from ttpa_ray.construct.steps import ROW_SCHEMA, STEPS, make_teacher
from ttpa_ray.engines.base import GenerationParams
from ttpa_ray.engines.json_output import check_reply, repair_request
from ttpa_ray.engines.vllm_engine import (
    VLLMConfig,
    build_processor_config,
    dummy_prompt_ids,
    load_tokenizer,
    processor_factory,
    render_prompts,
    require_vllm,
    sampling_params,
)

# Columns carried between the stages of one step, besides ROW_SCHEMA's.
STEP_SCHEMA = (
    ROW_SCHEMA.append(pa.field("_active", pa.bool_()))
    .append(pa.field("_prompt", pa.string()))
    .append(pa.field("_prompt_ids", pa.list_(pa.int64())))
    .append(pa.field("_repair", pa.string()))
)
CARRY = [*STEP_SCHEMA.names]
DUMMY_PARAMS = {"temperature": 0.0, "max_tokens": 1, "n": 1}

ProcessorFactory = Callable[[str, int], Callable[[Any], Any]]


def vllm_config(cfg: ConstructConfig) -> VLLMConfig:
    """The engine settings of the `vllm` teacher."""
    t = cfg.teacher
    assert t.model is not None  # checked by TeacherConfig
    # `dtype` is the hf teacher's: vLLM keeps its own "auto".
    return VLLMConfig.from_section(
        t, t.model, batch_size=t.batch_size, pipeline_parallel_size=t.pipeline_parallel_size
    )


def generation_params(cfg: ConstructConfig) -> GenerationParams:
    t = cfg.teacher
    return GenerationParams(
        max_tokens=t.max_tokens, temperature=t.temperature, top_p=t.top_p, seed=cfg.seed
    )


def preprocess(row: dict[str, Any], params: GenerationParams) -> dict[str, Any]:
    """A rendered row → the vLLM stage's inputs (one sample per row; dummy when idle)."""
    return {
        "prompt": row["_prompt"],
        "tokenized_prompt": [int(t) for t in row["_prompt_ids"]],
        "sampling_params": sampling_params(params) if row["_active"] else dict(DUMMY_PARAMS),
    }


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """The row as the engine stage left it (ours + `generated_text` + vLLM's fields).

    Kept whole on purpose: rows that fail in the engine bypass postprocess and keep
    every key, so a success row with fewer keys would make the blocks' schemas differ
    (the first row's keys win and `generated_text` would be lost).
    """
    return {**row, "generated_text": str(row.get("generated_text") or "")}


def default_processor_factory(cfg: ConstructConfig) -> ProcessorFactory:
    """`(step, attempt) → processor` building Ray Data LLM vLLM processors (needs vLLM)."""
    require_vllm()
    return processor_factory(
        # An engine error quarantines its row instead of failing the job.
        build_processor_config(vllm_config(cfg), should_continue_on_error=True),
        functools.partial(preprocess, params=generation_params(cfg)),
        postprocess,
    )


class RenderPrompts:
    """Render each row's request for `step` with the model's chat template.

    `attempt` 1 renders rows still alive; attempt 2 renders the repair conversation of
    rows that ``parse_row`` flagged, and dummies for the rest.
    """

    def __init__(self, step: str, config_json: str, attempt: int, tokenizer_path: str) -> None:
        self.step, self.attempt = step, attempt
        self.teacher: Any = _teacher(config_json)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.dummy_ids = dummy_prompt_ids(self.tokenizer)

    def render_row(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {k: row.get(k) for k in CARRY}
        row.update(_active=False, _prompt="", _prompt_ids=self.dummy_ids)
        if row.get("_quarantine_reason"):
            return row
        if self.attempt == 1:
            row["_repair"] = None
        elif not row.get("_repair"):
            return row  # valid at attempt 1
        try:
            request = self.teacher.request(self.step, row)
            if self.attempt > 1:
                repair = json.loads(str(row["_repair"]))
                request = repair_request(request, repair["text"], repair["errors"])
            text = render_prompts(self.tokenizer, [request])[0]
        except Exception as e:  # noqa: BLE001 - a row we cannot prompt is quarantined
            fail(row, self.step, f"teacher_error:{type(e).__name__}: {e}")
            return row
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        row.update(_active=True, _prompt=text, _prompt_ids=list(ids))
        return row


def _render_batch(
    batch: pa.Table, step: str, config_json: str, attempt: int, tokenizer_path: str
) -> pa.Table:
    # A task, not an actor: actors would hold CPUs for the whole run, and with two
    # renders per step they starve a small machine; the tokenizer is cached per worker.
    render = RenderPrompts(step, config_json, attempt, tokenizer_path)
    return pa.Table.from_pylist([render.render_row(r) for r in batch.to_pylist()], STEP_SCHEMA)


def parse_row(
    teacher: Any, step: str, row: dict[str, Any], attempt: int, last: bool
) -> dict[str, Any]:
    """Validate an active row's reply: store it, flag it for repair, or quarantine it."""
    out = {k: row.get(k) for k in CARRY}
    if not row.get("_active"):
        return out
    out["_active"] = False
    error = row.get("__inference_error__")
    if error:
        fail(out, step, f"teacher_error:EngineError: {error}")
        return out
    text = str(row.get("generated_text") or "")
    earlier = json.loads(str(out["_repair"]))["reasons"] if out.get("_repair") else []
    value, errors = check_reply(text, teacher.validator(step, out))
    out["_repair"] = None
    if not errors:
        try:
            teacher.parse(step, out, value)
        except Restart as e:
            fail(out, step, f"restart: {e}")
        return out
    reasons = earlier + [f"attempt {attempt}: {e}" for e in errors]
    if last:
        fail(out, step, "invalid_output: " + "; ".join(reasons)[:2000])
    else:
        out["_repair"] = json.dumps({"text": text, "errors": errors, "reasons": reasons})
    return out


def _parse_batch(
    batch: pa.Table, step: str, config_json: str, attempt: int, last: bool
) -> pa.Table:
    teacher = _teacher(config_json)
    rows = [parse_row(teacher, step, r, attempt, last) for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=STEP_SCHEMA)


@functools.cache
def _teacher(config_json: str) -> Any:
    return make_teacher(json.loads(config_json), with_engine=False)


def _to_rows(batch: pa.Table) -> pa.Table:
    return batch.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)


def vllm_steps(
    ds: Any, cfg: ConstructConfig, processor_factory: ProcessorFactory | None = None
) -> Any:
    """The four steps (and repair rounds) over `ds` (ROW_SCHEMA rows) → ROW_SCHEMA rows."""
    factory = processor_factory or default_processor_factory(cfg)
    config_json = cfg.model_dump_json()
    t = cfg.teacher
    assert t.model is not None
    attempts = 2 if t.repair else 1
    import ray.data

    cpu = {
        "num_cpus": cfg.num_cpus,
        "batch_format": "pyarrow",
        "compute": ray.data.TaskPoolStrategy(size=cfg.workers),
    }
    for step in STEPS:
        for attempt in range(1, attempts + 1):
            ds = ds.map_batches(
                _render_batch,
                fn_args=(step, config_json, attempt, t.model),
                **cpu,
            )
            ds = factory(step, attempt)(ds)
            ds = ds.map_batches(
                _parse_batch,
                fn_args=(step, config_json, attempt, attempt == attempts),
                **cpu,
            )
    return ds.map_batches(_to_rows, **cpu)


__all__ = [
    "STEP_SCHEMA",
    "RenderPrompts",
    "default_processor_factory",
    "parse_row",
    "postprocess",
    "preprocess",
    "vllm_config",
    "vllm_steps",
]
