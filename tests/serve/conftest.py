"""Serve fixtures: the tiny model with two LoRA adapters, and the app on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ttpa_ray.cluster.head import free_ports
from ttpa_ray.tools.catalog import load_builtin

TOOLS = [t.to_openai() for t in load_builtin().tools]


@pytest.fixture(scope="session")
def serve_model_dir(tiny_model) -> Path:
    return tiny_model


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (not zero) weights, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        model = get_peft_model(base, cfg)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapters(serve_model_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: str(make_adapter(serve_model_dir, root / name, seed))
        for name, seed in (("a1", 1), ("a2", 2))
    }


@pytest.fixture(scope="module")
def server(ray_local, serve_model_dir, adapters) -> Iterator[dict[str, Any]]:
    """The app with both adapters on 127.0.0.1, plus a second app (`/secure`) with an API
    key, no batching, a limit of 1 request in flight and `max_prompt_tokens` 1000."""
    from ray import serve

    from ttpa_ray.config import ServeConfig
    from ttpa_ray.serve.deploy import deploy, start

    port = free_ports(1)[0]
    cfg = ServeConfig(
        model=str(serve_model_dir),
        adapters=adapters,
        port=port,
        num_cpus=0.5,
        default_max_tokens=16,
        max_ongoing_requests=64,
        max_batch_size=8,
    )
    url = start(cfg)
    secure = ServeConfig(
        model=str(serve_model_dir),
        port=port,
        num_cpus=0.25,
        batching=False,
        max_ongoing_requests=1,
        default_max_tokens=16,
        max_prompt_tokens=1000,
    )
    deploy(secure, api_key="sekret", name="secure", route_prefix="/secure")
    try:
        yield {
            "url": url,
            "root": f"http://127.0.0.1:{port}",
            "secure": f"http://127.0.0.1:{port}/secure/v1",
            "model": "tiny",
        }
    finally:
        serve.shutdown()
