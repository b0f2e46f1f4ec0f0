"""TPS on the tiny model: branch pairs share every token before `branch_token_index` and
differ at it; KV reuse gives the same candidates as naive branching; n-sample is seeded."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from ttpa_ray.config import SampleConfig
from ttpa_ray.engines.base import EngineError
from ttpa_ray.engines.hf_engine import ContextLengthError, HFEngine
from ttpa_ray.sample.candidates import candidate_key
from ttpa_ray.sample.hf_sampler import HFSampler
from ttpa_ray.sample.pairs import ScoredCandidate, pair_rows
from ttpa_ray.schema.turns import episode_turns
from ttpa_ray.score.esm import esm_score
from ttpa_ray.train.data import pair_example


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> HFEngine:
    return HFEngine(tiny_model_dir)


@pytest.fixture(scope="module")
def turns(episode_rows):
    return [t for row in episode_rows[:2] for t in episode_turns(row, 2, distractors=1)[0]]


def test_branch_pairs_share_the_prefix_and_differ_at_the_branch_token(
    engine, turns, tiny_model_dir
):
    sampler = HFSampler(engine, SampleConfig(max_tokens=48))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    checked = 0
    for turn in turns:
        got = sampler.branch(turn)
        assert got.candidates, "an untrained policy diverges from gold somewhere"
        # Each candidate is the gold text up to its branch point, then something else.
        for c in got.candidates:
            k = c.branch_token_index
            assert c.source == "branch" and 0 <= k < len(got.gold_ids)
            assert c.text.startswith(tok.decode(got.gold_ids[:k], skip_special_tokens=True))
            assert c.text != turn.gold_text
        scored = [
            ScoredCandidate(c, esm_score(c.text, turn.gold_calls, turn.tools))
            for c in got.candidates
        ]
        gold_train = sampler.train_ids(turn.gold_text)
        for row in pair_rows(turn.to_row(), scored, 0.8, gold_train):
            if row["source"] != "branch":
                continue
            # The trainer's own tokenisation of the pair (train.data.pair_example).
            ex = pair_example(tok, row, max_len=4096)
            k = ex.branch_token_index
            assert k >= 0
            assert ex.chosen_ids[:k] == ex.rejected_ids[:k]
            assert ex.chosen_ids[k] != ex.rejected_ids[k]
            checked += 1
    assert checked >= len(turns)


def test_kv_reuse_gives_the_same_candidates_as_naive_branching(tiny_model_dir, turns):
    # float64 so that the two computation orders cannot flip a near-tie argmax
    engine = HFEngine(tiny_model_dir)
    engine.model = engine.model.double()
    reuse = HFSampler(engine, SampleConfig(max_tokens=40, kv_reuse=True))
    naive = HFSampler(engine, SampleConfig(max_tokens=40, kv_reuse=False))
    for turn in turns[:3]:
        a, b = reuse.branch(turn), naive.branch(turn)
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.branch_token_index for c in a.candidates] == [
            c.branch_token_index for c in b.candidates
        ]
        for x, y in zip(a.candidates, b.candidates, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-6)
        # reuse forwards strictly fewer tokens: the prompt + gold prefix is computed once
        assert a.forward_tokens < b.forward_tokens


def test_n_sample_is_seeded_and_counts_tokens(engine, turns):
    s = SampleConfig(n=4, temperature=1.0, max_tokens=24, seed=7)
    a = HFSampler(engine, s).n_sample(turns[0])
    b = HFSampler(engine, s).n_sample(turns[0])
    c = HFSampler(engine, SampleConfig(n=4, temperature=1.0, max_tokens=24, seed=8)).n_sample(
        turns[0]
    )
    assert [x.text for x in a.candidates] == [x.text for x in b.candidates]
    assert [x.text for x in a.candidates] != [x.text for x in c.candidates]
    assert len(a.candidates) == 4 and all(x.source == "n_sample" for x in a.candidates)
    assert all(x.logprob is not None and x.logprob < 0 for x in a.candidates)
    prompt_len = len(HFSampler(engine, s).prompt_ids(turns[0]))
    # one prompt forward shared by the 4 samples, then at most 4 × 24 decode tokens
    assert prompt_len < a.forward_tokens <= prompt_len + 4 * 24


def test_both_modes_and_unknown_mode(engine, turns):
    sampler = HFSampler(engine, SampleConfig(n=2, max_tokens=16))
    got = sampler.sample(turns[0], "both")
    sources = {c.source for c in got.candidates}
    assert sources == {"n_sample", "branch"}
    assert len({candidate_key(c.text) for c in got.candidates}) <= len(got.candidates)
    with pytest.raises(ValueError, match="mode"):
        sampler.sample(turns[0], "beam")


def test_no_decoding_past_the_context_and_no_truncation(tiny_model_dir, turns, monkeypatch):
    engine = HFEngine(tiny_model_dir)
    sampler = HFSampler(engine, SampleConfig(n=2, temperature=1.0, max_tokens=48))
    turn = turns[0]
    prompt, gold = sampler.prompt_ids(turn), sampler.gold_ids(turn)
    caps: list[Any] = []
    real = sampler._decode

    def spy(*args: Any) -> Any:
        caps.append(args[5])
        return real(*args)

    monkeypatch.setattr(sampler, "_decode", spy)
    # n-sample: the samples stop where the context ends (3 tokens after the prompt)
    engine.max_length = len(prompt) + 3
    got = sampler.n_sample(turn)
    assert caps == [3] and got.forward_tokens <= len(prompt) + 2 * 3
    # branch: prompt + gold must fit; a branch at gold index i has context - P - i tokens
    engine.max_length = len(prompt) + len(gold) + 2
    got = sampler.branch(turn)
    assert got.candidates
    for cap, c in zip(caps[1], got.candidates, strict=True):
        assert cap <= engine.max_length - len(prompt) - c.branch_token_index
    engine.max_length = len(prompt) + len(gold) - 1
    with pytest.raises(ContextLengthError, match="context_length_exceeded: turn"):
        sampler.sample(turn, "both")
    # over max_prompt_tokens (or the context): the turn fails, the prompt is never cut
    engine.max_length, engine.max_prompt_tokens = 2048, len(prompt) - 1
    with pytest.raises(
        EngineError, match=rf"the prompt has {len(prompt)} tokens; .*accepts at most"
    ):
        sampler.sample(turn, "n_sample")
    engine.max_prompt_tokens = len(prompt)
    assert sampler.prompt_ids(turn) == prompt
