"""The `vllm` teacher's pure parts on CPU (no vLLM): config, prompts, rows in and out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ttpa_ray.config import ConstructConfig
from ttpa_ray.construct import vllm_stage
from ttpa_ray.construct.steps import make_teacher
from ttpa_ray.engines.vllm_engine import build_processor_config

CFG = ConstructConfig.model_validate(
    {
        "teacher": {
            "kind": "vllm",
            "model": "/models/qwen2.5-7b",
            "tensor_parallel_size": 2,
            "concurrency": 3,
            "accelerator_type": "H100",
            "batch_size": 32,
            "max_tokens": 700,
            "temperature": 0.5,
        },
        "seed": 11,
    }
)


def test_vllm_config_and_processor_config_from_the_construct_config():
    vcfg = vllm_stage.vllm_config(CFG)
    assert (vcfg.model, vcfg.tensor_parallel_size, vcfg.concurrency) == ("/models/qwen2.5-7b", 2, 3)
    assert vcfg.enable_prefix_caching and vcfg.batch_size == 32
    proc = build_processor_config(vcfg, should_continue_on_error=True)
    assert proc.should_continue_on_error is True
    assert proc.accelerator_type == "H100" and proc.engine_kwargs["tensor_parallel_size"] == 2
    assert proc.engine_kwargs["enable_prefix_caching"] is True
    params = vllm_stage.generation_params(CFG)
    assert (params.max_tokens, params.temperature, params.seed) == (700, 0.5, 11)


def test_preprocess_active_and_dummy_rows():
    params = vllm_stage.generation_params(CFG)
    row = {"_prompt": "p", "_prompt_ids": [5, 6], "_active": True}
    out = vllm_stage.preprocess(row, params)
    assert out["tokenized_prompt"] == [5, 6] and out["prompt"] == "p"
    assert out["sampling_params"]["max_tokens"] == 700 and out["sampling_params"]["seed"] == 11
    dummy = vllm_stage.preprocess({**row, "_active": False}, params)
    assert dummy["sampling_params"]["max_tokens"] == 1  # rows with nothing to generate
    post = vllm_stage.postprocess({"_active": True, "extra": 1, "generated_text": None})
    assert post["generated_text"] == "" and post["extra"] == 1  # kept whole


def teacher() -> Any:
    return make_teacher(json.loads(CFG.model_dump_json()), with_engine=False)


def scene_reply(t: Any, seed: int) -> str:
    names = [w.name for w in t.window(seed)][:7]
    return json.dumps({"scenario": "s", "constraints": ["a", "b", "c", "d"], "tools": names})


def test_parse_row_stores_flags_for_repair_and_quarantines():
    t = teacher()
    base = {"id": "ep-1", "seed": 1, "_active": True, "__inference_error__": ""}
    ok = vllm_stage.parse_row(t, "scene", {**base, "generated_text": scene_reply(t, 1)}, 1, False)
    assert ok["_quarantine_reason"] is None and json.loads(ok["scene"])["tools"]
    assert ok["_active"] is False and ok["_repair"] is None

    first = vllm_stage.parse_row(t, "scene", {**base, "generated_text": "prose"}, 1, False)
    assert first["_quarantine_reason"] is None and first["scene"] is None
    repair = json.loads(first["_repair"])
    assert repair["text"] == "prose" and repair["reasons"][0].startswith("attempt 1: no JSON")

    second = vllm_stage.parse_row(
        t, "scene", {**first, "_active": True, "generated_text": "still prose"}, 2, True
    )
    reason = second["_quarantine_reason"]
    assert reason.startswith("scene: invalid_output: attempt 1: no JSON") and "attempt 2:" in reason

    err = vllm_stage.parse_row(
        t, "scene", {**base, "__inference_error__": "CUDA OOM", "generated_text": ""}, 1, False
    )
    assert err["_quarantine_reason"] == "scene: teacher_error:EngineError: CUDA OOM"

    restart = vllm_stage.parse_row(
        t, "scene", {**base, "generated_text": '{"restart": "no fit"}'}, 1, False
    )
    assert restart["_quarantine_reason"] == "scene: restart: no fit"

    idle = vllm_stage.parse_row(
        t, "scene", {**base, "_active": False, "generated_text": "x"}, 1, True
    )
    assert idle["_quarantine_reason"] is None and idle["scene"] is None  # untouched


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_model) -> Any:
    return tiny_model


def test_render_prompts_with_the_chat_template(tokenizer_dir):
    cfg = ConstructConfig.model_validate({"teacher": {"kind": "vllm", "model": str(tokenizer_dir)}})
    config_json = cfg.model_dump_json()
    first = vllm_stage.RenderPrompts("scene", config_json, 1, str(tokenizer_dir))
    row = first.render_row({"id": "ep-2", "seed": 2})
    assert row["_active"] and row["_prompt"].startswith("<|im_start|>system\n")
    assert "Step 1 of 4" in row["_prompt"] and row["_prompt"].endswith("<|im_start|>assistant\n")
    assert first.tokenizer.decode(row["_prompt_ids"]) == row["_prompt"]
    done = first.render_row({"id": "ep-3", "seed": 3, "_quarantine_reason": "scene: x"})
    assert not done["_active"] and len(done["_prompt_ids"]) == 1

    repair = vllm_stage.RenderPrompts("scene", config_json, 2, str(tokenizer_dir))
    assert not repair.render_row({"id": "ep-2", "seed": 2})["_active"]  # valid at attempt 1
    flagged = {
        "id": "ep-2",
        "seed": 2,
        "_repair": json.dumps({"text": "prose", "errors": ["no JSON"], "reasons": []}),
    }
    again = repair.render_row(flagged)
    assert again["_active"] and "prose" in again["_prompt"] and "- no JSON" in again["_prompt"]
