"""The OpenAI surface beyond chat tool calls, over real HTTP with the official `openai`
client: legacy completions (BFCL's path for local models), model retrieval, logprobs
(also as the TPS `openai` sampler reads them), response_format, refused parameters."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import torch
from openai import OpenAI
from test_app import TOOLS, msg, post

from ttpa_ray.config import SampleConfig
from ttpa_ray.engines.base import ChatRequest as EngineRequest
from ttpa_ray.engines.hf_engine import HFEngine
from ttpa_ray.sample.openai_sampler import OpenAISampler
from ttpa_ray.schema.turns import Turn

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def local(serve_model_dir) -> HFEngine:
    """The served base model, run here in process for reference answers."""
    return HFEngine(serve_model_dir)


def greedy_ids(local: HFEngine, prompt: list[int], max_new: int) -> list[int]:
    out = local.model.generate(
        input_ids=torch.tensor([prompt]),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=local.eos_token_ids,
        pad_token_id=local.pad_token_id,
    )
    return out[0, len(prompt) :].tolist()


def model_logprobs(local: HFEngine, prompt: list[int], new: list[int]) -> list[float]:
    """The model's own log-prob of each new token (one teacher-forced forward pass)."""
    with torch.inference_mode():
        logits = local.model(input_ids=torch.tensor([prompt + new])).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return lp.gather(1, torch.tensor(new)[:, None]).squeeze(1).tolist()


def test_legacy_completions_with_the_openai_client(server, local):
    client = OpenAI(base_url=server["url"], api_key="unused")
    prompt = "<|im_start|>user\nName a city.<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    ids = local.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    want = local.tokenizer.decode(greedy_ids(local, ids, 8), skip_special_tokens=True)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    (choice,) = r.choices
    assert choice.text == want and choice.finish_reason == "length"  # sent as is
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 8
    # streamed: the same text, then usage
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8
    # logprobs (legacy shape), n sampled choices
    scored = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=2
    )
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 8
    assert lp.token_logprobs == pytest.approx(
        model_logprobs(local, ids, greedy_ids(local, ids, 8)), abs=1e-4
    )
    assert all(len(top) in (2, 3) for top in lp.top_logprobs)
    two = client.completions.create(
        model="tiny:a1", prompt=prompt, max_tokens=6, temperature=1.0, n=2, seed=1
    )
    assert [c.index for c in two.choices] == [0, 1]
    # refused and failing requests: 400 in OpenAI's shape, naming the field
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt=prompt, echo=True)
    assert info.value.param == "echo" and info.value.code == "unsupported_parameter"
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(
                model="tiny", prompt="word " * 3000, max_tokens=4, stream=stream
            )
        assert info.value.param == "prompt" and info.value.code == "context_length_exceeded"
    code, out = post(server["secure"] + "/completions", {"model": "tiny", "prompt": "x"})
    assert code == 401 and out["error"]["code"] == "invalid_api_key"


def test_models_are_retrieved_by_id(server):
    client = OpenAI(base_url=server["url"], api_key="unused")
    for model_id in ("tiny", "tiny:a1"):
        m = client.models.retrieve(model_id)
        assert (m.id, m.object, m.owned_by) == (model_id, "model", "ttpa-ray")
    listed = {m.id: m.created for m in client.models.list()}
    assert client.models.retrieve("tiny:a2").created == listed["tiny:a2"]
    for missing in ("nope", "tiny:zz", "org/tiny"):
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(missing)
        assert info.value.code == "model_not_found" and info.value.param == "model"


def test_logprobs_reach_the_tps_openai_sampler(server, local):
    """Chat logprobs are the served model's own, token by token (OpenAI's shape), and the
    TPS `openai` sampler, pointed at our endpoint, gets each candidate's summed log-prob.
    Tolerance 1e-4 per token: float32 on CPU, incremental decoding with a KV cache vs one
    teacher-forced pass differ only in summation order (~1e-6 per logit)."""
    client = OpenAI(base_url=server["url"], api_key="unused")
    messages, tools = msg("What's the weather in Paris?"), TOOLS[:2]
    r = client.chat.completions.create(
        model="tiny",
        messages=messages,
        tools=tools,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    prompt = local.encode(EngineRequest(messages, tools), 8)
    new = greedy_ids(local, prompt, 8)
    want = model_logprobs(local, prompt, new)
    content = r.choices[0].logprobs.content
    assert [t.token for t in content] == [local.tokenizer.decode([t]) for t in new]
    assert [t.logprob for t in content] == pytest.approx(want, abs=1e-4)
    assert all(t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)
    assert all(bytes(t.bytes) == t.token.encode() for t in content)
    # the TPS path: SampleConfig wants temperature > 0; 1e-6 decodes greedily, so the
    # candidates are the tokens above and their log-probs the model's
    cfg = SampleConfig(
        engine="openai",
        policy=server["url"],
        model="tiny",
        mode="n_sample",
        n=2,
        temperature=1e-6,
        max_tokens=8,
        max_retries=0,
    )
    turn = Turn("t0", "e0", 0, messages, tools, {}, [], "")
    (result,) = OpenAISampler(cfg).sample([turn])
    assert not isinstance(result, Exception), result
    candidates, forward_tokens = result
    assert forward_tokens == 2 * 8 + len(prompt)
    for cand in candidates:
        assert cand.logprob == pytest.approx(sum(want), abs=1e-3)


def test_response_format_and_refused_parameters(server):
    client = OpenAI(base_url=server["url"], api_key="unused")
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    rf = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema}}
    r = client.chat.completions.create(
        model="tiny", messages=msg("Forecast as JSON"), response_format=rf, max_tokens=200
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    anything = client.chat.completions.create(
        model="tiny:a1",
        messages=msg("JSON please"),
        response_format={"type": "json_object"},
        max_tokens=400,
        temperature=1.0,
        seed=2,
    )
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    for kw, param in [
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tools": TOOLS[:1], "tool_choice": "required", "response_format": rf}, "response_format"),
    ]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", messages=msg("x"), max_tokens=2, **kw)
        assert info.value.param == param, info.value
