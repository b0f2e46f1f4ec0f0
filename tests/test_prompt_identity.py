"""Train on what you evaluate: for the same tool-call turn, the SFT prompt ids, the TPS
prompt ids (hf and vLLM paths, after the Parquet round trip of a turn row) and the ids the
Serve endpoint tokenises for the held-out eval request are identical — with both chat
templates, and for a turn whose prompt had to omit old tool results to fit its budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttpa_ray.config import SampleConfig, TinyShape
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.engines.base import ChatRequest, GenerationParams
from ttpa_ray.engines.hf_engine import HFEngine
from ttpa_ray.engines.openai_engine import OpenAIEngine
from ttpa_ray.eval.suites import load_heldout
from ttpa_ray.sample import tokens
from ttpa_ray.sample.hf_sampler import HFSampler
from ttpa_ray.schema.io import write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA
from ttpa_ray.schema.turns import OMITTED, PromptFit, Turn, episode_turns
from ttpa_ray.serve import protocol
from ttpa_ray.serve.backend import GenRequest, HFChatBackend
from ttpa_ray.tools.catalog import load_builtin
from ttpa_ray.train.data import IGNORE, sft_turn_examples, turn_prompt_ids
from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

TOOLS = load_builtin().tools
DISTRACTORS, MAX_TURNS = 1, 3


@pytest.fixture(scope="module", params=["compact", "hermes"])
def model_dir(request, tmp_path_factory) -> Path:
    texts = catalog_texts(
        [t.to_openai() for t in TOOLS], examples_per_tool=1, template=request.param
    )
    cfg = TinyShape(template=request.param)
    return create_tiny_model_dir(texts, tmp_path_factory.mktemp(f"tiny-{request.param}"), cfg)


@pytest.fixture(scope="module")
def construct_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("construct")
    rows = [build_episode(s, TOOLS).to_row() for s in range(4)]
    write_rows(root / "episodes" / "test.parquet", rows, EPISODE_SCHEMA)
    (root / "manifest.json").write_text(json.dumps({"holdout_tools": []}))
    return root


def _served_ids(backend: HFChatBackend, messages: list, tools: list) -> list[int]:
    """What the endpoint tokenises for an eval request: the OpenAI engine's JSON body,
    over the wire, parsed by the Serve protocol, rendered by the backend."""
    engine = OpenAIEngine("http://127.0.0.1:9/v1", model="m")
    body = engine.payload(ChatRequest(messages, tools), GenerationParams(max_tokens=8))
    req = protocol.ChatRequest.model_validate(json.loads(json.dumps(body)))
    return backend.prompt_ids(GenRequest(messages=req.messages, tools=req.tools, max_tokens=8))


def test_sft_tps_and_eval_prompt_ids_are_identical(model_dir, construct_dir):
    engine = HFEngine(model_dir)
    tok = engine.tokenizer
    sampler = HFSampler(engine, SampleConfig(max_tokens=8))
    backend = HFChatBackend(model_dir)
    examples, _, _ = load_heldout(construct_dir, DISTRACTORS)
    by_id = {e.id: e for e in examples}
    from ttpa_ray.schema.io import read_rows

    checked = 0
    for row in read_rows(construct_dir / "episodes" / "test.parquet"):
        sft, skipped = sft_turn_examples(
            tok, row, 100_000, distractors=DISTRACTORS, max_turns=MAX_TURNS
        )
        assert not skipped
        turns, _ = episode_turns(row, MAX_TURNS, DISTRACTORS)
        assert len(sft) == len(turns) > 0
        for ex, turn in zip(sft, turns, strict=True):
            head = ex.labels.index(next(t for t in ex.labels if t != IGNORE))
            sft_ids = ex.input_ids[:head]
            tps_turn = Turn.from_row(json.loads(json.dumps(turn.to_row())))
            eval_ex = by_id[turn.id]
            assert sft_ids == turn_prompt_ids(tok, turn)
            assert sft_ids == sampler.prompt_ids(tps_turn)  # hf TPS
            assert sft_ids == tokens.prompt_ids(tok, tps_turn)  # vLLM TPS rows
            assert sft_ids == _served_ids(backend, eval_ex.messages, eval_ex.tools)
            # the label is the gold turn, ending at the end-of-turn token
            assert tok.decode(ex.input_ids[head:]).startswith("<tool_call>")
            assert ex.input_ids[-1] == tok.eos_token_id
            checked += 1
    assert checked >= 4


def test_fitted_prompt_is_the_same_everywhere(model_dir):
    """A prompt over budget omits its oldest tool results; the fitted turn is what SFT,
    TPS and eval all see (the query and tools block are intact)."""
    engine = HFEngine(model_dir)
    tok = engine.tokenizer
    rows = (build_episode(s, TOOLS).to_row() for s in range(50))
    row = next(r for r in rows if sum(m["role"] == "tool" for m in r["messages"]) >= 2)
    full, _ = episode_turns(row, None, DISTRACTORS)
    last = full[-1]
    n_full = len(turn_prompt_ids(tok, last))
    fit = PromptFit.for_tokenizer(tok, n_full - 5)
    fitted, bad = episode_turns(row, None, DISTRACTORS, fit)
    f = next(t for t in fitted if t.id == last.id)
    assert f.omitted_results >= 1 and not [q for q in bad if q.row_id == last.id]
    ids = turn_prompt_ids(tok, f)
    assert len(ids) <= n_full - 5
    assert any(m.get("content") == OMITTED for m in f.prompt)
    assert f.prompt[1]["content"] == last.prompt[1]["content"]  # the query, untouched
    served = _served_ids(HFChatBackend(model_dir), f.prompt, f.tools)
    assert ids == served == HFSampler(engine, SampleConfig()).prompt_ids(f)
