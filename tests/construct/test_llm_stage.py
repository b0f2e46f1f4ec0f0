"""LLM teachers on real local Ray: `openai` over real HTTP, `hf` on the tiny model,
`vllm`'s Ray Data LLM wiring (a real `Processor`; the engine stage is scripted, since
vLLM needs CUDA)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.config import ConstructConfig
from ttpa_ray.construct.stage import run_construct
from ttpa_ray.construct.steps import STEPS
from ttpa_ray.schema.io import read_rows
from ttpa_ray.schema.validate import call_errors


def cfg(teacher: dict[str, Any], **kw: Any) -> ConstructConfig:
    base = {
        "n_episodes": 24,
        "shard_size": 12,
        # 4 actor pools share 2 CPUs on CI: fractional CPUs, or the pipeline stalls
        "num_cpus": 0.25,
        "split": {"val": 0.1, "test": 0.1},
        "teacher": teacher,
    }
    return ConstructConfig.model_validate({**base, **kw})


def all_episodes(out: Path) -> list[dict[str, Any]]:
    return [
        r for s in ("train", "val", "test") for r in read_rows(out / "episodes" / f"{s}.parquet")
    ]


def check_accounting(manifest: dict[str, Any], out: Path, n: int) -> None:
    stages = {s["stage"]: s for s in manifest["stages"]}
    total = stages["construct"]
    assert total["rows_in"] == n == total["rows_out"] + total["rows_quarantined"]
    for name in (*STEPS, "assemble", "validate"):
        s = stages[f"construct.{name}"]
        assert s["rows_in"] == s["rows_out"] + s["rows_quarantined"]
    quarantine = read_rows(out / "quarantine.parquet")
    assert len(quarantine) == total["rows_quarantined"]
    assert all(q["reason"] and q["stage"].startswith("construct.") for q in quarantine)


def check_episodes(episodes: list[dict[str, Any]], teacher: str) -> None:
    for r in episodes:
        tools = json.loads(r["tools"])
        calls = [c for m in r["messages"] for c in m["tool_calls"] or []]
        assert len(calls) == 4 and 7 <= len(tools) <= 10
        for c in calls:
            fn = c["function"]
            assert call_errors({"name": fn["name"], "arguments": fn["arguments"]}, tools) == []
        assert r["teacher"] == teacher
        assert json.loads(r["meta"])["generation_order"] == list(STEPS)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_openai_teacher_over_http(ray_local, tmp_path, openai_teacher_server):
    teacher = {
        "kind": "openai",
        "model": "scripted-teacher",
        "base_url": openai_teacher_server["base_url"],
        "max_retries": 1,
        "batch_size": 6,
        "max_concurrency": 4,
    }
    out = tmp_path / "openai"
    manifest = run_construct(cfg(teacher), out, progress=False)
    check_accounting(manifest, out, 24)
    episodes = all_episodes(out)
    assert len(episodes) >= 8
    check_episodes(episodes, "openai")
    reasons = manifest["quarantine_reasons"]
    assert "scene: invalid_output" in reasons or "scene: restart" in reasons
    # every episode asked the endpoint at least for its scene (+ repairs and retries)
    assert len(openai_teacher_server["seen"]) >= 24 + 3 * len(episodes)
    # a re-run resumes: nothing is asked again
    before = len(openai_teacher_server["seen"])
    again = run_construct(cfg(teacher), out, progress=False)
    assert again["shards_skipped"] == 2 and len(openai_teacher_server["seen"]) == before


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_hf_teacher_on_the_tiny_model(ray_local, tmp_path, tiny_model):
    """The untrained tiny model writes no usable JSON: every episode is quarantined at
    the scene step after the repair round, and the run says so with its accounting."""
    model = tiny_model
    teacher = {"kind": "hf", "model": str(model), "max_tokens": 24, "batch_size": 4}
    all_quarantined_at_scene(teacher, tmp_path / "hf", repaired=True)


def all_quarantined_at_scene(teacher: dict[str, Any], out: Path, repaired: bool) -> None:
    """4 episodes with an untrained-model teacher: the run stops with every episode
    quarantined at the scene step, each with its reply's reasons (both attempts' when
    `repaired`), rows accounted for."""
    with pytest.raises(ValueError, match="all 4 episodes were quarantined"):
        run_construct(cfg(teacher, n_episodes=4, shard_size=4), out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    check_accounting(manifest, out, 4)
    quarantine = read_rows(out / "quarantine.parquet")
    assert len(quarantine) == 4
    for q in quarantine:
        # the model's replies, parsed and found unusable: not a crash nor an engine error
        assert q["reason"].startswith("scene: invalid_output: attempt 1:"), q["reason"]
        assert ("attempt 2:" in q["reason"]) is repaired and "EngineError" not in q["reason"]


# -- vllm: the real Ray Data LLM Processor around a scripted engine stage -------------------


def scripted_processor_factory(scripted: Any, engine_error_every: int = 0) -> Any:
    """`(step, attempt) → Processor`: Ray Data LLM's own `Processor` (preprocess, a stage,
    postprocess; continue-on-error) whose engine stage replies like the scripted model
    and, optionally, reports an inference error for every k-th active row."""
    import ray
    from ray.llm._internal.batch.processor.base import OfflineProcessorConfig, Processor
    from ray.llm._internal.batch.stages.base import StatefulStage, StatefulStageUDF

    from ttpa_ray.construct import vllm_stage
    from ttpa_ray.engines.base import GenerationParams

    # Ray workers cannot import test modules: ship them by value.
    ray.cloudpickle.register_pickle_by_value(scripted)
    reply = scripted.scripted_reply  # the function, not the module (its dict holds pytest's)

    class ScriptedEngineUDF(StatefulStageUDF):
        def __init__(self, data_column: str, expected_input_keys: list[str]) -> None:
            super().__init__(data_column, expected_input_keys)
            self.seen = 0

        async def udf(self, rows: list[dict[str, Any]]):
            import re

            for row in rows:
                turns = re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", row["prompt"], re.S)
                messages = [{"role": r, "content": c} for r, c in turns]
                # Like vLLM's stage: the same keys on success and on error.
                out: dict[str, Any] = {
                    "__idx_in_batch": row["__idx_in_batch"],
                    "generated_text": "",
                    "num_generated_tokens": 0,
                    "__inference_error__": "",
                }
                if row["sampling_params"]["max_tokens"] > 1:  # not a dummy row
                    self.seen += 1
                    if engine_error_every and self.seen % engine_error_every == 0:
                        out["__inference_error__"] = "CUDA out of memory (scripted)"
                    else:
                        out["generated_text"] = reply(messages)
                        out["num_generated_tokens"] = len(out["generated_text"])
                yield out

    def factory(step: str, attempt: int) -> Any:
        config = OfflineProcessorConfig(
            model_source="scripted", batch_size=8, should_continue_on_error=True
        )
        params = GenerationParams(max_tokens=256)
        stage = StatefulStage(
            fn=ScriptedEngineUDF, map_batches_kwargs={"concurrency": 1, "num_cpus": 0.1}
        )
        return Processor(
            config,
            [stage],
            preprocess=lambda row: vllm_stage.preprocess(row, params),
            postprocess=vllm_stage.postprocess,
        )

    return factory


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_vllm_teacher_wiring_through_ray_data_llm(ray_local, tmp_path, tiny_model, scripted_module):
    teacher = {"kind": "vllm", "model": str(tiny_model), "batch_size": 8}
    out = tmp_path / "vllm"
    manifest = run_construct(
        cfg(teacher, n_episodes=24, shard_size=24),
        out,
        progress=False,
        processor_factory=scripted_processor_factory(scripted_module, engine_error_every=11),
    )
    check_accounting(manifest, out, 24)
    episodes = all_episodes(out)
    assert len(episodes) >= 8
    check_episodes(episodes, "vllm")
    reasons = manifest["quarantine_reasons"]
    assert any(k.endswith("teacher_error") for k in reasons), reasons
    quarantine = read_rows(out / "quarantine.parquet")
    text = " ".join(q["reason"] for q in quarantine)
    assert "CUDA out of memory (scripted)" in text
    # a repaired scene (prose first, JSON on the repair round) made it through: the
    # scripted model answers h % 10 == 1 prompts only on repair
    assert "attempt 2: no JSON" in text  # and the twice-prose ones are discarded with both reasons


def test_vllm_teacher_without_vllm_says_how_to_install(ray_local, tmp_path, no_vllm):
    teacher = {"kind": "vllm", "model": str(tmp_path)}
    with pytest.raises(ImportError, match=r"pip install 'ttpa-ray\[gpu\]'"):
        run_construct(cfg(teacher, n_episodes=2, shard_size=2), tmp_path / "v", progress=False)
