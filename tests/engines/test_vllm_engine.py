"""vLLM engine wiring, tested on CPU without vLLM (config, prompts, pre/postprocess)."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import pytest

from ttpa_ray.engines import ChatRequest, GenerationParams, make_engine
from ttpa_ray.engines.vllm_engine import (
    VLLM_MISSING,
    VLLMConfig,
    VLLMEngine,
    build_processor_config,
    collect,
    engine_kwargs,
    expand_rows,
    postprocess_row,
    preprocess_row,
    processor_config_kwargs,
    render_prompts,
    require_vllm,
    sampling_params,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
FLIGHT = {
    "type": "function",
    "function": {
        "name": "book_flight",
        "description": "Book a flight.",
        "parameters": {"type": "object", "properties": {"origin": {"type": "string"}}},
    },
}
CFG = VLLMConfig(
    model="/models/qwen",
    tensor_parallel_size=2,
    pipeline_parallel_size=2,
    batch_size=16,
    concurrency=3,
    accelerator_type="H100",
    enable_prefix_caching=True,
    max_model_len=8192,
    gpu_memory_utilization=0.8,
    dtype="bfloat16",
)


def test_engine_kwargs():
    assert engine_kwargs(CFG) == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "enable_prefix_caching": True,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.8,
        "dtype": "bfloat16",
    }


def test_real_processor_config_is_built_without_vllm():
    # `ray.data.llm.vLLMEngineProcessorConfig` is a pydantic model: it validates without vLLM.
    from ray.data.llm import vLLMEngineProcessorConfig

    cfg = build_processor_config(CFG)
    assert isinstance(cfg, vLLMEngineProcessorConfig)
    assert cfg.model_source == "/models/qwen"
    assert (cfg.batch_size, cfg.concurrency, cfg.accelerator_type) == (16, 3, "H100")
    assert cfg.task_type == "generate"
    for key, value in engine_kwargs(CFG).items():
        assert cfg.engine_kwargs[key] == value
    # We render and tokenize ourselves (per-row tools); vLLM returns text.
    stages = (cfg.chat_template_stage, cfg.tokenize_stage, cfg.detokenize_stage)
    assert all(s is False or getattr(s, "enabled", True) is False for s in stages)
    assert processor_config_kwargs(CFG)["chat_template_stage"] is False


@pytest.mark.timeout(180)
def test_build_processor_has_only_the_engine_stage(ray_local, tmp_path):
    from ray.data.llm import build_processor

    params = GenerationParams(max_tokens=5)
    processor = build_processor(
        build_processor_config(VLLMConfig(model=str(tmp_path))),
        preprocess=functools.partial(preprocess_row, params=params),
        postprocess=postprocess_row,
    )
    assert list(processor.stages) == ["vLLMEngineStage"]
    # The processor's wrapped pre/postprocess run our functions on a row (no vLLM needed).
    col = processor.DATA_COLUMN
    data = processor.preprocess({"request_index": 0, "sample_index": 0, "prompt": "p"})[col]
    assert data["sampling_params"]["max_tokens"] == 5 and data["prompt"] == "p"
    data["generated_text"] = "out"  # what the engine stage adds
    assert processor.postprocess({col: data}) == {
        "request_index": 0,
        "sample_index": 0,
        "generated_text": "out",
    }


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Any:
    from transformers import AutoTokenizer

    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    out = create_tiny_model_dir(catalog_texts([WEATHER, FLIGHT]), tmp_path_factory.mktemp("tiny"))
    return AutoTokenizer.from_pretrained(out, local_files_only=True)


def test_render_prompts_uses_each_request_tools(tokenizer):
    requests = [
        ChatRequest([{"role": "user", "content": "Weather in Paris?"}], [WEATHER]),
        ChatRequest([{"role": "user", "content": "Fly me"}], [FLIGHT]),
        ChatRequest([{"role": "user", "content": "hi"}]),
    ]
    prompts = render_prompts(tokenizer, requests)
    assert "get_weather" in prompts[0] and "book_flight" not in prompts[0]
    assert "book_flight" in prompts[1] and "get_weather" not in prompts[1]
    assert "<tools>" not in prompts[2]
    for prompt, request in zip(prompts, requests, strict=True):
        assert prompt == tokenizer.apply_chat_template(
            request.messages, tools=request.tools, add_generation_prompt=True, tokenize=False
        )
        assert prompt.endswith("<|im_start|>assistant\n")


def test_sampling_params_and_preprocess():
    params = GenerationParams(
        max_tokens=9, temperature=0.7, top_p=0.95, n=3, seed=10, stop=["</tool_call>"]
    )
    assert sampling_params(params, 2) == {
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 9,
        "n": 1,
        "skip_special_tokens": True,
        "seed": 12,
        "stop": ["</tool_call>"],
    }
    assert "seed" not in sampling_params(GenerationParams()) and "stop" not in sampling_params(
        GenerationParams()
    )
    row = {"request_index": 4, "sample_index": 1, "prompt": "P", "prompt_token_ids": [5, 6]}
    out = preprocess_row(row, params)
    assert out == {
        "request_index": 4,
        "sample_index": 1,
        "prompt": "P",
        "tokenized_prompt": [5, 6],
        "sampling_params": sampling_params(params, 1),
    }
    assert "tokenized_prompt" not in preprocess_row(
        {"request_index": 0, "sample_index": 0, "prompt": "P"}, params
    )


def test_fan_out_and_collect():
    sampled = GenerationParams(n=2, temperature=1.0, seed=0)
    rows = expand_rows(["A", "B"], sampled, [[1], [2]])
    assert [(r["request_index"], r["sample_index"], r["prompt_token_ids"]) for r in rows] == [
        (0, 0, [1]),
        (0, 1, [1]),
        (1, 0, [2]),
        (1, 1, [2]),
    ]
    # Greedy: one row per request, the text repeated n times.
    greedy = GenerationParams(n=3)
    assert len(expand_rows(["A", "B"], greedy)) == 2
    # Engine output rows come back in any order, with extra columns.
    processed = [
        {"request_index": 1, "sample_index": 1, "generated_text": "b1", "num_generated_tokens": 2},
        {"request_index": 0, "sample_index": 1, "generated_text": "a1"},
        {"request_index": 1, "sample_index": 0, "generated_text": "b0"},
        {"request_index": 0, "sample_index": 0, "generated_text": "a0"},
    ]
    out = [postprocess_row(r) for r in processed]
    assert set(out[0]) == {"request_index", "sample_index", "generated_text"}
    assert collect(out, 2, sampled) == [["a0", "a1"], ["b0", "b1"]]
    assert collect([{"request_index": 0, "sample_index": 0, "generated_text": "g"}], 1, greedy) == [
        ["g"] * 3
    ]


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_clear_import_error_without_vllm():
    with pytest.raises(ImportError) as err:
        require_vllm()
    assert (
        str(err.value)
        == VLLM_MISSING
        == "vLLM is not installed: pip install 'ttpa-ray[gpu]' on a CUDA machine"
    )
    with pytest.raises(ImportError, match="vLLM is not installed"):
        VLLMEngine("some/model")
    with pytest.raises(ImportError, match="vLLM is not installed"):
        make_engine("vllm", model=CFG)
