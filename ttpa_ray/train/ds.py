"""DeepSpeed configuration from our `TrainConfig`, and what it needs on a CPU.

On CPU (DESIGN §8): gloo (Ray Train's process group, which DeepSpeed reuses), DeepSpeed's
own torch Adam (`torch_adam: true`: no compiled fused op), fp32, `DS_BUILD_OPS=0`.
On GPU: bf16 unless told otherwise. The LR schedule is DeepSpeed's `WarmupCosineLR`
(linear warmup, cosine decay to `min_lr_ratio · lr`).
"""

from __future__ import annotations

import time
from typing import Any

from ttpa_ray.config import TrainConfig


def deepspeed_config(cfg: TrainConfig, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for `deepspeed.initialize(config=...)`."""
    bf16 = on_gpu if cfg.bf16 is None else cfg.bf16
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # Export gathers the full weights on rank 0 (`_zero3_consolidated_16bit_state_dict`).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.clip,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                # CPU: no fused/compiled Adam; on GPU DeepSpeed picks its fused kernel.
                "torch_adam": not on_gpu,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": cfg.max_steps,
                # DeepSpeed wants ≥ 1 warmup step (1 step from 0 ≈ no warmup) and < total.
                "warmup_num_steps": max(1, min(cfg.warmup_steps, cfg.max_steps - 1)),
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": cfg.min_lr_ratio,
            },
        },
    }


def use_cpu_shm_comm(enabled: bool) -> None:
    """Whether DeepSpeed's CPU comm backend loads its shared-memory allreduce op.

    DeepSpeed builds that op (`deepspeed_shm_comm`) with torch's JIT extension loader at
    every `init_distributed` on CPU (cached after the first build; its ninja log here
    shows 72–134 s per compile on 2 busy cores), and a compile killed midway (a stopped
    job, a test timeout) leaves a lock file behind on which every later start on that
    machine waits forever. Off, DeepSpeed's torch backend
    uses gloo's allreduce (what Ray Train set up). DeepSpeed consults its per-process
    table of compatible ops before building; marking the op incompatible is the switch.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = (
        enabled and deepspeed.ops.__compatible_ops__.get("deepspeed_shm_comm", False)
    )


def measure_matmul_flops(n: int, device: Any = "cpu", seconds: float = 0.3) -> float:
    """FLOP/s of `torch.mm` on `[n, n] x [n, n]` float32 (bf16 on CUDA): the MFU denominator."""
    import torch

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)
