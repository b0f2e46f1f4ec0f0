"""SFT on tool-call turns: one example per turn from the shared prompt builder, loss on
the gold turn only, nothing cut from the left (fitted or quarantined), counts that add up."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from ttpa_ray.config import TinyShape, TrainConfig
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.turns import OMITTED, episode_turns
from ttpa_ray.tools.catalog import load_builtin
from ttpa_ray.train.data import IGNORE, sft_turn_examples, turn_prompt_ids
from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir
from ttpa_ray.train.trainer import prepare_examples

TOOLS = load_builtin().tools


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = catalog_texts([t.to_openai() for t in TOOLS], examples_per_tool=1, template="compact")
    d = create_tiny_model_dir(texts, tmp_path_factory.mktemp("tiny"), TinyShape(template="compact"))
    return AutoTokenizer.from_pretrained(d, local_files_only=True)


@pytest.fixture(scope="module")
def rows():
    return [build_episode(s, TOOLS).to_row() for s in range(6)]


def _head(ex) -> int:
    return next(i for i, t in enumerate(ex.labels) if t != IGNORE)


def test_one_example_per_turn_labelled_with_the_gold_turn(tokenizer, rows):
    for row in rows:
        turns, _ = episode_turns(row, 2, 1)
        examples, skipped = sft_turn_examples(tokenizer, row, 100_000, distractors=1, max_turns=2)
        assert not skipped and len(examples) == len(turns) >= 1
        for ex, turn in zip(examples, turns, strict=True):
            head = _head(ex)
            assert ex.input_ids[:head] == turn_prompt_ids(tokenizer, turn)
            assert all(t == IGNORE for t in ex.labels[:head])
            label = tokenizer.decode(ex.input_ids[head:])
            assert label == turn.gold_text + tokenizer.eos_token
            # the prompt carries the tools block and the query in full
            prompt = tokenizer.decode(ex.input_ids[:head])
            assert "<tools>" in prompt and turn.prompt[1]["content"] in prompt


def test_long_examples_are_fitted_or_quarantined_never_cut(tokenizer, rows):
    row = next(r for r in rows if sum(m["role"] == "tool" for m in r["messages"]) >= 1)
    full, _ = sft_turn_examples(tokenizer, row, 100_000)
    longest = max(full, key=lambda e: len(e.input_ids))
    prompt_len, label_len = _head(longest), len(longest.input_ids) - _head(longest)
    # a budget a little short: old tool results are omitted, nothing else changes
    fitted, skipped = sft_turn_examples(tokenizer, row, len(longest.input_ids) - 3)
    got = [e for e in fitted if e.fitted]
    if got:
        text = tokenizer.decode(got[0].input_ids)
        assert OMITTED in text and text.startswith("<|im_start|>system")
        assert all(len(e.input_ids) <= len(longest.input_ids) - 3 for e in fitted)
    else:  # the longest turn had no tool result to omit
        assert skipped and "prompt_too_long" in skipped[0][1]
    # no room at all: every turn is quarantined with its reason, none is cut
    examples, skipped = sft_turn_examples(tokenizer, row, label_len + prompt_len // 4)
    reasons = [r for _, r in skipped]
    assert len(examples) + len(skipped) == len(full)
    assert reasons and all("prompt_too_long" in r for r in reasons)
    for e in examples:
        assert tokenizer.decode(e.input_ids).startswith("<|im_start|>system")


def test_final_answers_share_and_counts(tokenizer, rows):
    none, _ = sft_turn_examples(tokenizer, rows[0], 100_000, final_answers=0.0)
    all_, _ = sft_turn_examples(tokenizer, rows[0], 100_000, final_answers=1.0)
    assert len(all_) == len(none) + 1
    answer = rows[0]["messages"][-1]["content"]
    assert answer in tokenizer.decode(all_[-1].input_ids[_head(all_[-1]) :])
    cfg = TrainConfig(max_len=100_000, examples="turns", final_answers=0.0)
    examples, bad, fitted = prepare_examples("sft", rows, tokenizer, cfg)
    n_turns = sum(len(episode_turns(r)[0]) + len(episode_turns(r)[1]) for r in rows)
    assert len(examples) + len(bad) == n_turns and fitted == 0
    tight = cfg.model_copy(update={"max_len": 64})
    examples, bad, _ = prepare_examples("sft", rows, tokenizer, tight)
    assert not examples and len(bad) == n_turns
    assert all(b.stage == "train.sft" and "prompt_too_long" in b.reason for b in bad)
