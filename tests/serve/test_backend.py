"""The hf backend in process: batching changes nothing, failures stay per request."""

from __future__ import annotations

import pytest

from ttpa_ray.engines.base import EngineError
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
    assert isinstance(out[1], EngineError) and "200" in str(out[1])
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
