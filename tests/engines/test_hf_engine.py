"""HFEngine end to end on a tiny model directory built in a tmp dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from ttpa_ray.engines import ChatRequest, EngineError, GenerationParams, make_engine
from ttpa_ray.engines.hf_engine import ContextLengthError, HFEngine, truncate_at_stop


def tool(name: str, prop: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Does {name}.",
            "parameters": {
                "type": "object",
                "properties": {prop: {"type": "string"}},
                "required": [prop],
            },
        },
    }


WEATHER, FLIGHT, EMAIL = (
    tool("get_weather", "city"),
    tool("book_flight", "origin"),
    tool("send_email", "to"),
)
REQUESTS = [
    ChatRequest([{"role": "user", "content": "Weather in Paris?"}], [WEATHER], "a"),
    ChatRequest(
        [{"role": "user", "content": "Book a flight from Tokyo to Berlin next week, please."}],
        [FLIGHT, EMAIL],
        "b",
    ),
    ChatRequest([{"role": "user", "content": "hi"}], None, "c"),
]
SHORT = GenerationParams(max_tokens=12)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("engine") / "tiny"
    shutil.copytree(tiny_model, out)  # the shared model is read-only: perturb a copy
    # A freshly initialised tiny model (std 0.02) greedily repeats one token; larger
    # weights make its outputs differ per prompt, so the batching checks mean something.
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3, generator=gen)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(model_dir) -> HFEngine:
    return HFEngine(model_dir, batch_size=8)


def test_batch_with_different_tools(engine):
    out = engine.generate(REQUESTS, SHORT)
    assert [len(texts) for texts in out] == [1, 1, 1]
    assert all(isinstance(t, str) and t for texts in out for t in texts)
    assert len({texts[0] for texts in out}) == 3  # different prompts, different outputs
    # Each request is rendered with its own tools.
    prompts = [engine.render(r) for r in REQUESTS]
    assert "get_weather" in prompts[0] and "book_flight" not in prompts[0]
    assert (
        "book_flight" in prompts[1]
        and "send_email" in prompts[1]
        and "get_weather" not in prompts[1]
    )
    assert "<tools>" not in prompts[2]
    assert all(p.endswith("<|im_start|>assistant\n") for p in prompts)


def test_no_special_tokens_in_output(engine):
    for texts in engine.generate(REQUESTS, SHORT):
        assert not any(s in texts[0] for s in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))


def test_greedy_is_deterministic_and_n_copies(engine):
    first = engine.generate(REQUESTS, SHORT)
    assert engine.generate(REQUESTS, SHORT) == first
    twice = engine.generate(REQUESTS, GenerationParams(max_tokens=12, n=2))
    assert twice == [[t[0], t[0]] for t in first]


def test_seeded_sampling_is_reproducible(engine):
    params = GenerationParams(max_tokens=12, temperature=1.0, n=2, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    first = engine.generate(REQUESTS, params)
    assert engine.generate(REQUESTS, params) == first
    assert all(len(texts) == 2 for texts in first)
    assert any(texts[0] != texts[1] for texts in first)
    assert (
        engine.generate(REQUESTS, GenerationParams(max_tokens=12, temperature=1.0, n=2, seed=8))
        != first
    )
    # The caller's global RNG is left alone.
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)


def test_left_padding_matches_unbatched(model_dir, engine):
    batched = engine.generate(REQUESTS, SHORT)
    single = HFEngine(model_dir, batch_size=1)
    assert single.generate(REQUESTS, SHORT) == batched
    # Order is preserved whatever the length-sorted batching does.
    reversed_out = engine.generate(REQUESTS[::-1], SHORT)
    assert reversed_out == batched[::-1]


def test_stop_strings(engine):
    [[full]] = engine.generate(REQUESTS[:1], SHORT)
    stop = full[3:5]
    [[cut]] = engine.generate(REQUESTS[:1], GenerationParams(max_tokens=12, stop=[stop]))
    assert cut == full[: full.find(stop)]
    assert truncate_at_stop("abcXdefY", ["Y", "X"]) == "abc"
    assert truncate_at_stop("abc", None) == "abc"


def test_a_long_neighbour_does_not_cut_a_short_prompts_budget(model_dir, monkeypatch):
    engine = HFEngine(model_dir, batch_size=8)
    short, mid, long = REQUESTS[2], REQUESTS[0], REQUESTS[1]
    n_short, n_mid, n_long = (len(engine.encode(r, 12)) for r in (short, mid, long))
    assert n_long - n_mid > 12 and n_mid > n_short
    alone = engine.generate([short], SHORT)
    engine.max_length = n_long + 3  # the long prompt has room for 3 new tokens only
    calls: list[tuple[int, int, int]] = []
    real = engine.model.generate

    def spy(**kw: Any) -> Any:
        rows, width = kw["input_ids"].shape
        calls.append((width, kw["max_new_tokens"], rows))
        return real(**kw)

    monkeypatch.setattr(engine.model, "generate", spy)
    together = engine.generate([long, short, mid], SHORT)
    # the two short prompts run together with all 12 tokens, the long one alone with 3
    assert calls == [(n_mid, 12, 2), (n_long, 3, 1)]
    assert all(width + new <= engine.max_length for width, new, _ in calls)
    assert together[1] == alone[0]


def test_a_prompt_too_long_is_rejected_never_truncated(model_dir, monkeypatch):
    engine = HFEngine(model_dir)
    long_request = ChatRequest([{"role": "user", "content": "Paris " * 50}], [WEATHER], "long")
    full = engine.tokenizer(engine.render(long_request), add_special_tokens=False)["input_ids"]
    n = len(full)

    def never(**kw: Any) -> Any:
        raise AssertionError("an over-long prompt reached the model")

    monkeypatch.setattr(engine.model, "generate", never)
    engine.max_length = n  # a context without room for one new token
    with pytest.raises(
        ContextLengthError,
        match=rf"^context_length_exceeded: request 'long': the prompt has {n} tokens; "
        rf"the model's context length is {n} tokens",
    ):
        engine.generate([REQUESTS[2], long_request], SHORT)
    engine.max_length, engine.max_prompt_tokens = 2048, n - 1
    with pytest.raises(
        EngineError, match=rf"context_length_exceeded: .*{n} tokens; .*accepts at most {n - 1}"
    ):
        engine.encode(long_request, 4)
    engine.max_prompt_tokens = n  # at the limit: every token kept, none cut
    assert engine.encode(long_request, 4) == full
    assert not hasattr(engine, "truncated_prompts")
    # one token of room: exactly one new token, from the whole prompt
    monkeypatch.undo()
    engine.max_length = n + 1
    calls: list[int] = []
    real = engine.model.generate

    def spy(**kw: Any) -> Any:
        calls.append(kw["max_new_tokens"])
        assert kw["input_ids"][0].tolist() == full
        return real(**kw)

    monkeypatch.setattr(engine.model, "generate", spy)
    [[text]] = engine.generate([long_request], SHORT)
    assert calls == [1] and isinstance(text, str)


def test_the_teachers_batch_fails_only_the_long_prompt(model_dir):
    # The hf teacher's path (construct.llm_teacher → generate_json_batch): the engine
    # raises for the batch, the batch is retried per request, only the long row fails.
    from ttpa_ray.engines.json_output import generate_json_batch

    engine = HFEngine(model_dir)
    long_request = ChatRequest([{"role": "user", "content": "Paris " * 50}], [WEATHER], "long")
    engine.max_prompt_tokens = len(engine.encode(long_request, 4)) - 1
    reqs = [REQUESTS[0], long_request, REQUESTS[2]]
    results = generate_json_batch(engine, reqs, SHORT, [lambda v: []] * 3, repair=False)
    assert [r.engine_error is None for r in results] == [True, False, True]
    assert str(results[1].engine_error).startswith("context_length_exceeded: request 'long'")


def test_missing_chat_template(model_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = bare / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match="no chat template"):
        HFEngine(bare)


def test_factory_and_bad_arguments(model_dir, tmp_path):
    assert make_engine("hf", model_path=model_dir, dtype="float32").name == "hf"
    with pytest.raises(ValueError, match="dtype"):
        HFEngine(model_dir, dtype="int3")
    with pytest.raises(EngineError, match="not found"):
        HFEngine(tmp_path / "nope")
    assert HFEngine(model_dir).generate([], SHORT) == []
