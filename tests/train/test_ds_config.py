"""DeepSpeed config from TrainConfig: CPU vs GPU, ZeRO-3 export, schedule."""

from __future__ import annotations

from ttpa_ray.config import TrainConfig
from ttpa_ray.train.ds import deepspeed_config, measure_matmul_flops
from ttpa_ray.train.loop import batch_at


def test_cpu_and_gpu_configs():
    cfg = TrainConfig.model_validate(
        {
            "zero_stage": 3,
            "micro_batch_size": 2,
            "grad_accum": 4,
            "max_steps": 5,
            "warmup_steps": 50,
        }
    )
    cpu = deepspeed_config(cfg, on_gpu=False)
    assert cpu["optimizer"]["params"]["torch_adam"] is True and cpu["bf16"]["enabled"] is False
    assert cpu["zero_optimization"] == {
        "stage": 3,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    assert (cpu["train_micro_batch_size_per_gpu"], cpu["gradient_accumulation_steps"]) == (2, 4)
    assert cpu["scheduler"]["params"]["warmup_num_steps"] == 4  # clamped below max_steps
    none = deepspeed_config(cfg.model_copy(update={"warmup_steps": 0}), on_gpu=False)
    assert none["scheduler"]["params"]["warmup_num_steps"] == 1  # DeepSpeed's minimum
    gpu = deepspeed_config(cfg, on_gpu=True)
    assert gpu["bf16"]["enabled"] is True and gpu["optimizer"]["params"]["torch_adam"] is False
    forced = deepspeed_config(cfg.model_copy(update={"bf16": False}), on_gpu=True)
    assert forced["bf16"]["enabled"] is False


def test_batches_are_a_function_of_the_index():
    items = list(range(10))
    first = [batch_at(items, i, 3, seed=0) for i in range(6)]
    assert first == [batch_at(items, i, 3, seed=0) for i in range(6)]  # resume sees the same
    assert sorted(x for b in first[:3] for x in b) == sorted(set(x for b in first[:3] for x in b))
    assert first[:3] != first[3:6]  # a new epoch, a new order


def test_matmul_flops_is_positive():
    assert measure_matmul_flops(64, seconds=0.05) > 1e6


def test_cpu_workers_skip_deepspeeds_jit_compiled_shm_op_unless_asked(monkeypatch):
    """Off (the default), DeepSpeed's CPU backend never JIT-compiles its shared-memory op:
    no compiler run, no lock file in ~/.cache/torch_extensions to hang on."""
    import importlib

    import deepspeed.ops

    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.ds import use_cpu_shm_comm

    assert TrainConfig().cpu_shm_comm is False
    table = dict(deepspeed.ops.__compatible_ops__)
    monkeypatch.setattr(deepspeed.ops, "__compatible_ops__", table)
    use_cpu_shm_comm(False)
    assert table["deepspeed_shm_comm"] is False
    # returns before any compile (`import deepspeed.comm.torch as m` would give torch: the
    # package re-exports it under that name)
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    assert ds_comm_torch.build_shm_op() is None
    table["deepspeed_shm_comm"] = True
    use_cpu_shm_comm(True)  # on: left as DeepSpeed probed it
    assert table["deepspeed_shm_comm"] is True
