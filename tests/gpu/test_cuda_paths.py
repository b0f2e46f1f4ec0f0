"""The CUDA paths, on the shared tiny model: the HF engine in bf16 on a GPU, DeepSpeed's
bf16 training step as our trainer configures it, and vLLM's engine. Marked `gpu`: skipped,
with the reason, where torch sees no CUDA device (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.gpu

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _requests():
    from ttpa_ray.engines.base import ChatRequest

    return [
        ChatRequest([{"role": "user", "content": f"weather in {c}?"}], [WEATHER])
        for c in ("Paris", "Oslo", "Lima")
    ]


def test_hf_engine_bf16_on_cuda_matches_cpu_float32(tiny_model):
    """bf16 on the GPU is the same model: teacher-forced log-probs of the same ids agree
    with CPU float32 within bf16's resolution, and batched generation runs on the GPU."""
    import torch

    from ttpa_ray.engines.base import GenerationParams
    from ttpa_ray.engines.hf_engine import HFEngine

    gpu = HFEngine(tiny_model, device="cuda", dtype="bfloat16")
    cpu = HFEngine(tiny_model, device="cpu", dtype="float32")
    assert next(gpu.model.parameters()).dtype == torch.bfloat16
    assert next(gpu.model.parameters()).device.type == "cuda"
    ids = cpu.tokenizer("get_weather city Paris Oslo", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp_cpu = torch.log_softmax(cpu.model(ids).logits.float(), -1)
        lp_gpu = torch.log_softmax(gpu.model(ids.to("cuda")).logits.float(), -1).cpu()
    # bf16 keeps 8 bits of mantissa: ~0.4% relative error per op on a 2-layer model
    assert torch.allclose(lp_cpu, lp_gpu, atol=0.1), (lp_cpu - lp_gpu).abs().max()
    out = gpu.generate(_requests(), GenerationParams(max_tokens=8, temperature=0.0))
    assert len(out) == 3 and all(len(o) == 1 and isinstance(o[0], str) for o in out)


def test_deepspeed_bf16_training_step_lowers_the_loss(tiny_model):
    """Our DeepSpeed config on a GPU (bf16 on, fused Adam) trains: 20 steps on one batch
    lower the SFT loss, and the engine's weights are bf16."""
    deepspeed = pytest.importorskip("deepspeed")
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.ds import deepspeed_config
    from ttpa_ray.train.objectives import sft_loss

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        tok = AutoTokenizer.from_pretrained(tiny_model)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        cfg = TrainConfig(micro_batch_size=2, max_steps=20, lr=3e-3, warmup_steps=1)
        ds_cfg = deepspeed_config(cfg, on_gpu=True)
        assert ds_cfg["bf16"]["enabled"] is True
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=list(model.parameters()), config=ds_cfg
        )
        assert next(engine.module.parameters()).dtype == torch.bfloat16
        ids = tok(["<tool_call>get_weather Paris</tool_call>"] * 2, return_tensors="pt")
        batch = {
            "input_ids": ids["input_ids"].cuda(),
            "attention_mask": ids["attention_mask"].cuda(),
            "labels": ids["input_ids"].cuda(),
        }
        losses = []
        for _ in range(20):
            loss, _ = sft_loss(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], losses
    finally:
        dist.destroy_process_group()


def test_vllm_generates_on_cuda(tiny_model):
    """vLLM (the GPU extra) loads the tiny model and generates greedily."""
    vllm = pytest.importorskip("vllm")
    llm = vllm.LLM(model=str(tiny_model), dtype="float32", max_model_len=2048)
    out = llm.generate(["get_weather"], vllm.SamplingParams(max_tokens=4, temperature=0.0))
    assert len(out) == 1 and out[0].outputs and len(out[0].outputs[0].token_ids) >= 1
