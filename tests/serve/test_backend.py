"""The hf backend in process: batching changes nothing, failures stay per request, each
request gets its own new-token budget whatever its batch-mates."""

from __future__ import annotations

import pytest
import torch

from ttpa_ray.engines.base import EngineError
from ttpa_ray.engines.hf_engine import ContextLengthError
from ttpa_ray.serve.backend import GenRequest, HFChatBackend


@pytest.fixture(scope="module")
def backend(serve_model_dir, adapters) -> HFChatBackend:
    return HFChatBackend(serve_model_dir, adapters, max_prompt_tokens=200)


def req(text: str, **kw) -> GenRequest:
    return GenRequest(
        messages=[{"role": "user", "content": text}],
        max_tokens=kw.pop("max_tokens", 8),
        temperature=kw.pop("temperature", 0.0),
        **kw,
    )


def test_a_batch_gives_what_each_request_gets_alone(backend):
    reqs = [req("short"), req("a somewhat longer question here"), req("third", adapter="a1")]
    together = backend.generate(reqs)
    alone = [backend.generate([r])[0] for r in reqs]
    assert [g.texts for g in together] == [g.texts for g in alone]
    assert together[0].texts != together[2].texts or together[0].texts == [""]
    for g in together:
        assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 8
        assert g.finish_reasons[0] in ("stop", "length")


def test_failures_stay_with_their_request(backend):
    long = req("word " * 400)
    out = backend.generate([req("fine"), long, req("x", adapter="zz")])
    assert not isinstance(out[0], EngineError)
    assert isinstance(out[1], ContextLengthError) and "accepts at most 200" in str(out[1])
    assert str(out[1]).startswith("context_length_exceeded: the prompt has ")
    assert isinstance(out[2], EngineError) and "zz" in str(out[2])


def test_n_choices_seed_and_stop(backend):
    g = backend.generate([req("hello", n=3)])[0]
    assert len(g.texts) == 3 and len(set(g.texts)) == 1  # greedy: identical choices
    sampled = req("hello", n=3, temperature=1.0, seed=5, max_tokens=12)
    a, b = backend.generate([sampled])[0], backend.generate([sampled])[0]
    assert a.texts == b.texts  # seeded
    # a stop string that first occurs inside the (seeded) output cuts it there
    checked = 0
    for seed in range(6):
        kw = {"max_tokens": 16, "temperature": 1.0, "seed": seed}
        full = backend.generate([req("hello", **kw)])[0].texts[0]
        k = next((k for k in range(2, len(full) - 2) if full.find(full[k : k + 3]) == k), None)
        if k is None or not full[k : k + 3].strip():
            continue
        cut = backend.generate([req("hello", stop=[full[k : k + 3]], **kw)])[0]
        assert cut.texts[0] == full[:k] and cut.finish_reasons == ["stop"]
        checked += 1
    assert checked


def test_streaming_yields_the_same_text(backend):
    r = req("stream me", max_tokens=10)
    pieces = list(backend.stream(r))
    final = pieces[-1]
    assert "".join(pieces[:-1]) == final.texts[0] == backend.generate([r])[0].texts[0]


# The serve fixture's untrained model greedily repeats one token and never ends a turn, so
# a completion has exactly its budget of tokens and finish_reason "length".


def test_a_long_neighbour_does_not_cut_a_short_budget(backend, monkeypatch):
    short, long = req("short", max_tokens=8), req("word " * 30, max_tokens=8)
    n_short, n_long = len(backend.prompt_ids(short)), len(backend.prompt_ids(long))
    assert n_long - n_short > 8
    monkeypatch.setattr(backend.engine, "max_length", n_long + 3)  # room for 3 tokens
    got_long, got_short, got_a1 = backend.generate([long, short, req("x", adapter="a1")])
    assert got_short.completion_tokens == 8 and got_short.finish_reasons == ["length"]
    assert got_a1.completion_tokens == 8
    assert got_long.completion_tokens == 3 and got_long.finish_reasons == ["length"]
    assert got_long.prompt_tokens == n_long and got_short.prompt_tokens == n_short
    assert got_short.texts == backend.generate([short])[0].texts
    assert got_long.texts == backend.generate([long])[0].texts
    # n identical greedy choices: usage counts each choice's own budget
    three = backend.generate([req("word " * 30, max_tokens=8, n=3), short])[0]
    assert three.completion_tokens == 3 * 3 and three.finish_reasons == ["length"] * 3
    # streaming (a batch of one) has its own budget too
    final = list(backend.stream(long))[-1]
    assert final.completion_tokens == 3 and final.texts == got_long.texts


def test_a_prompt_with_no_room_fails_alone_and_is_not_cut(backend, monkeypatch):
    long = req("word " * 30)
    n = len(backend.prompt_ids(long))
    monkeypatch.setattr(backend.engine, "max_length", n)
    fine, bad, other = backend.generate([req("fine"), long, req("ok", adapter="a1")])
    assert isinstance(bad, ContextLengthError)
    assert bad.detail == (
        f"the prompt has {n} tokens; the model's context length is {n} tokens, which "
        "leaves no room for a completion"
    )
    assert fine.completion_tokens == 8 and other.completion_tokens == 8
    with pytest.raises(ContextLengthError):
        next(backend.stream(long))
    monkeypatch.setattr(backend.engine, "max_length", n + 1)
    one = backend.generate([long])[0]
    assert one.prompt_tokens == n and one.completion_tokens == 1


def test_a_failing_generate_fails_only_its_request(backend, monkeypatch):
    """A group whose generate() raises is re-run one by one: only the request that makes
    it fail gets the error; its batch-mates get what they get alone."""
    good = [req("one"), req("two"), req("three")]
    alone = [backend.generate([r])[0].texts for r in good]
    poison = req("poison")
    real = backend._run_group

    def run_group(reqs, prompts, streamer=None):
        if any(r is poison for r in reqs):
            raise OverflowError("seed out of range")  # not an EngineError: a server error
        return real(reqs, prompts, streamer)

    monkeypatch.setattr(backend, "_run_group", run_group)
    out = backend.generate([good[0], poison, good[1], good[2]])
    assert isinstance(out[1], OverflowError)
    assert [o.texts for o in (out[0], out[2], out[3])] == alone


def test_an_uncompilable_tool_schema_fails_alone(backend):
    from ttpa_ray.serve.backend import ConstraintError

    recursive = {
        "type": "function",
        "function": {
            "name": "tree",
            "parameters": {
                "type": "object",
                "properties": {"child": {"$ref": "#"}},
                "required": ["child"],
            },
        },
    }
    bad = req("go", tools=[recursive], constraint="required")
    out = backend.generate([req("fine"), bad])
    assert not isinstance(out[0], Exception)
    assert isinstance(out[1], ConstraintError) and str(out[1]).startswith("tools:")


def test_a_set_cancel_event_stops_decoding_at_the_next_step(backend):
    import threading

    free = backend.generate([req("count to many", max_tokens=64)])[0]
    cancel = threading.Event()
    cancel.set()
    stopped = backend.generate([req("count to many", max_tokens=64, cancel=cancel)])[0]
    # generate() checks stopping criteria after each new token: one token (+ the pad
    # that marks the row done), then done
    assert stopped.completion_tokens <= 2 < free.completion_tokens
    # in a batch, only the cancelled request's rows stop
    both = backend.generate(
        [req("count to many", max_tokens=64), req("count to many", max_tokens=64, cancel=cancel)]
    )
    assert both[0].texts == free.texts and both[1].completion_tokens <= 2


# -- raw prompts, logprobs, JSON responses ------------------------------------------------------


@pytest.fixture(scope="module")
def reference(serve_model_dir):
    """The base model and tokenizer loaded plainly (no PEFT, no backend)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(serve_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(serve_model_dir)


def model_logprobs(model, prompt: list[int], new: list[int]) -> torch.Tensor:
    """`[T, V]` log-softmax of the model's logits at each of the `T` new tokens, from one
    teacher-forced forward pass (no cache, no sampling settings, no grammar)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + new])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)


def assert_models_own(backend, reference, r: GenRequest) -> None:
    """Every choice's logprobs: the tokens, their log-probs and the top alternatives are
    the model's own (1e-4: float32, cached incremental decoding vs one full forward only
    reorders sums, ~1e-6 per logit)."""
    model, tok = reference
    prompt = backend.prompt_ids(r)
    gen = backend.generate([r])[0]
    assert gen.logprobs is not None and len(gen.logprobs) == r.n
    for text, tokens in zip(gen.texts, gen.logprobs, strict=True):
        ids = [t.token_id for t in tokens]
        assert ids and tok.decode(ids, skip_special_tokens=True).startswith(text)
        ref = model_logprobs(model, prompt, ids)
        for s, t in enumerate(tokens):
            assert t.token == tok.decode([t.token_id])
            assert t.logprob == pytest.approx(float(ref[s, t.token_id]), abs=1e-4)
            values, top = ref[s].topk(r.logprobs or 0)
            assert [a.token_id for a in t.top] == top.tolist()
            assert [a.logprob for a in t.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_logprobs_are_the_models_own_distribution(backend, reference):
    """Greedy, sampled at two temperatures, and constrained to a tool call: the reported
    log-probs are the model's raw distribution (not tempered, not grammar-masked)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
                    "required": ["x"],
                },
            },
        }
    ]
    greedy = req("hello", logprobs=3, max_tokens=8)
    assert_models_own(backend, reference, greedy)
    g = backend.generate([greedy])[0]
    assert all(t.top[0].token_id == t.token_id for t in g.logprobs[0])  # greedy: top-1
    for temperature in (0.5, 1.5):
        r = req("hello", logprobs=2, max_tokens=8, temperature=temperature, seed=3, n=2)
        assert_models_own(backend, reference, r)
    forced = req("call f", tools=tools, constraint="required", logprobs=1, max_tokens=40)
    assert_models_own(backend, reference, forced)
    # the grammar forced tokens the raw model finds unlikely: a masked distribution would
    # have given them log-prob ~0
    (forced_tokens,) = backend.generate([forced])[0].logprobs
    assert min(t.logprob for t in forced_tokens) < -1.0
    # without logprobs nothing is computed, and batching them with others changes nothing
    plain, scored = backend.generate([req("hello", max_tokens=8), greedy])
    assert plain.logprobs is None and scored.texts == plain.texts


def test_logprobs_end_where_a_stop_string_cuts(backend):
    for seed in range(6):
        kw = {"max_tokens": 16, "temperature": 1.0, "seed": seed, "logprobs": 0}
        full = backend.generate([req("hello", **kw)])[0]
        text = full.texts[0]
        k = next((k for k in range(2, len(text) - 2) if text.find(text[k : k + 3]) == k), None)
        if k is None or not text[k : k + 3].strip():
            continue
        cut = backend.generate([req("hello", stop=[text[k : k + 3]], **kw)])[0]
        tokens = [t.token for t in cut.logprobs[0]]
        joined = "".join(tokens)
        assert joined.startswith(cut.texts[0]) and "".join(tokens[:-1]) != joined
        assert len("".join(tokens[:-1])) < len(cut.texts[0]) or cut.texts[0] == ""
        return
    pytest.skip("no seed gave a usable stop string")


def test_streaming_never_sends_a_stop_string(backend):
    checked = 0
    for seed in range(6):
        kw = {"max_tokens": 16, "temperature": 1.0, "seed": seed}
        text = backend.generate([req("hello", **kw)])[0].texts[0]
        k = next((k for k in range(2, len(text) - 2) if text.find(text[k : k + 3]) == k), None)
        if k is None or not text[k : k + 3].strip():
            continue
        r = req("hello", stop=[text[k : k + 3]], **kw)
        pieces = list(backend.stream(r))
        assert "".join(pieces[:-1]) == pieces[-1].texts[0] == text[:k]
        checked += 1
    assert checked


def test_a_raw_prompt_is_sent_as_is(backend, reference):
    model, tok = reference
    text = "<|im_start|>user\nHello<|im_end|>\nplain words"
    r = GenRequest(prompt=text, max_tokens=6, temperature=0.0)
    ids = backend.prompt_ids(r)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]  # no template, no extras
    gen = backend.generate([r])[0]
    out = model.generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=backend.engine.eos_token_ids,
        pad_token_id=backend.engine.pad_token_id,
    )
    assert gen.texts[0] == tok.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert gen.prompt_tokens == len(ids)
    # batched with a chat request: the same answers as alone
    chat = req("hi")
    both = backend.generate([r, chat])
    assert both[0].texts == gen.texts and both[1].texts == backend.generate([chat])[0].texts
    # over max_prompt_tokens (200): fails alone, never cut
    assert isinstance(backend.generate([GenRequest(prompt="word " * 300)])[0], ContextLengthError)


def test_json_responses_follow_their_schema(backend):
    import json

    import jsonschema

    from ttpa_ray.serve.protocol import JSON_OBJECT_SCHEMA

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "units": {"enum": ["metric", "imperial"]},
        },
        "required": ["city", "days"],
    }
    greedy = req("weather as json", response_schema=schema, max_tokens=120)
    sampled = req("weather", response_schema=schema, max_tokens=120, temperature=1.0, seed=1, n=3)
    anything = req("some json", response_schema=JSON_OBJECT_SCHEMA, max_tokens=300)
    for r, gen in zip(
        (greedy, sampled, anything), backend.generate([greedy, sampled, anything]), strict=True
    ):
        for text, reason in zip(gen.texts, gen.finish_reasons, strict=True):
            assert reason == "stop", text
            jsonschema.validate(json.loads(text), r.response_schema)
    # streamed the same
    pieces = list(backend.stream(greedy))
    assert "".join(pieces[:-1]) == backend.generate([greedy])[0].texts[0]
    # an uncompilable schema fails alone, naming response_format
    from ttpa_ray.serve.backend import ConstraintError

    bad = req("x", response_schema={"type": "object", "properties": {"a": {"$ref": "#"}}})
    fine, failed = backend.generate([greedy, bad])
    assert not isinstance(fine, Exception)
    assert isinstance(failed, ConstraintError) and failed.param == "response_format"
