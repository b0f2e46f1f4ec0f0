"""The `vllm` TPS sampler on CPU without vLLM: config, request rows, `prompt_logprobs`
parsing, and the wiring through a real Ray Data LLM `Processor` whose engine stage is
scripted (it runs the tiny HF model the way vLLM would answer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.config import BranchConfig, SampleConfig
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.engines.base import eos_ids
from ttpa_ray.sample import tokens
from ttpa_ray.sample import vllm_rows as vr
from ttpa_ray.sample import vllm_sampler as vs
from ttpa_ray.sample.branch import top_width
from ttpa_ray.schema.turns import SAMPLED_SCHEMA, Turn, episode_turns
from ttpa_ray.tools.catalog import load_builtin

TOOLS = load_builtin().tools


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir  # tests/sample/conftest.py


@pytest.fixture(scope="module")
def turn_rows() -> list[dict[str, Any]]:
    rows = []
    for seed in range(3):
        turns, _ = episode_turns(build_episode(seed, TOOLS).to_row(), max_turns=2, distractors=1)
        rows += [{**t.to_row(), "shard": 0} for t in turns]
    return rows


def config(model_dir: Path, **kw: Any) -> SampleConfig:
    base = {
        "engine": "vllm",
        "policy": str(model_dir),
        "mode": "both",
        "n": 3,
        "max_tokens": 8,
        "seed": 7,
        "branch": {"top_k": 2, "lowest_k": 1, "max_branches": 3},
    }
    return SampleConfig.model_validate({**base, **kw})


def tok_eos(model_dir: Path) -> tuple[Any, frozenset[int], int]:
    tok, eos = vs._tokenizer(str(model_dir)), vs._eos(str(model_dir))
    return tok, eos, top_width(BranchConfig(top_k=2), vs._skip_special(str(model_dir)))


# -- config -------------------------------------------------------------------------------------


def test_processor_config_from_the_sample_config():
    cfg = SampleConfig.model_validate(
        {
            "engine": "vllm",
            "policy": "/models/qwen2.5-7b",
            "tensor_parallel_size": 2,
            "concurrency": 3,
            "accelerator_type": "H100",
            "enable_prefix_caching": False,
            "max_model_len": 2048,
            "vllm_batch_size": 16,
        }
    )
    proc = vs.processor_config(cfg, k=25)
    assert proc.model_source == "/models/qwen2.5-7b"
    assert (proc.batch_size, proc.concurrency, proc.accelerator_type) == (16, 3, "H100")
    assert proc.should_continue_on_error is True
    eng = proc.engine_kwargs
    assert eng["tensor_parallel_size"] == 2 and eng["enable_prefix_caching"] is False
    assert eng["max_model_len"] == 2048 and eng["max_logprobs"] == 25
    assert vs.processor_config(cfg, k=3).engine_kwargs["max_logprobs"] == 20  # vLLM's default
    with pytest.raises(ValueError, match="policy"):
        vs.vllm_config(SampleConfig(engine="vllm"))


def test_without_vllm_the_default_processor_says_how_to_install(model_dir, no_vllm):
    with pytest.raises(ImportError, match=r"pip install 'ttpa-ray\[gpu\]'"):
        vs.vllm_sample(None, config(model_dir))


def test_request_params_keys_are_fixed_per_pass():
    gen = vr.request_params(5, 0.7, 0.9, seed=3)
    assert gen == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 5,
        "n": 1,
        "skip_special_tokens": True,
        "seed": 3,
        "logprobs": 0,
    }
    assert set(vr.request_params(1, prompt_logprobs=9)) == set(gen) | {"prompt_logprobs"}


# -- rendering ----------------------------------------------------------------------------------


def test_n_sample_rows_carry_the_rendered_prompt_with_the_turns_tools(model_dir, turn_rows):
    tok, eos, k = tok_eos(model_dir)
    cfg = config(model_dir, mode="n_sample")
    row = turn_rows[0]
    turn = Turn.from_row(row)
    rows = vr.render_turn(row, tok, eos, cfg, k)
    text = tok.apply_chat_template(
        turn.prompt, tools=turn.tools, add_generation_prompt=True, tokenize=False
    )
    expected = tok(text, add_special_tokens=False)["input_ids"]
    assert [r["_kind"] for r in rows] == ["n_sample"] * 3
    for i, r in enumerate(rows):
        assert json.loads(r["_ids"]) == expected and r["_n_prompt"] == len(expected)
        params = json.loads(r["_params"])
        assert (params["seed"], params["temperature"], params["max_tokens"]) == (7 + i, 1.0, 8)
        assert "prompt_logprobs" not in params
        pre = vr.preprocess_row(r)
        assert pre["tokenized_prompt"] == expected and pre["sampling_params"] == params
    names = [t["function"]["name"] for t in turn.tools]
    assert len(names) >= 2 and all(n in tok.decode(expected) for n in names)
    assert json.loads(rows[0]["_train_gold"]) == tokens.train_ids(tok, turn.gold_text)
    assert json.loads(rows[0]["_turn"]) == row


def test_branch_gold_row_is_prompt_plus_gold_asking_for_prompt_logprobs(model_dir, turn_rows):
    tok, eos, k = tok_eos(model_dir)
    row = turn_rows[0]
    (gold_row,) = vr.render_turn(row, tok, eos, config(model_dir, mode="branch"), k)
    turn = Turn.from_row(row)
    prompt, gold = tokens.prompt_ids(tok, turn), tokens.gold_ids(tok, turn, set(eos))
    assert gold_row["_kind"] == "gold" and json.loads(gold_row["_ids"]) == prompt + gold
    assert gold_row["_n_prompt"] == len(prompt) and json.loads(gold_row["_gold_ids"]) == gold
    params = json.loads(gold_row["_params"])
    assert params["prompt_logprobs"] == k and params["max_tokens"] == 1
    assert params["temperature"] == 0.0 and k >= 2 + 1 + len(eos)


def test_unrenderable_and_too_long_turns_become_idle_rows_with_reasons(model_dir, turn_rows):
    tok, eos, k = tok_eos(model_dir)
    row = turn_rows[0]
    (bad,) = vr.render_turn({**row, "prompt": "not json"}, tok, eos, config(model_dir), k)
    assert bad["_kind"] == "idle" and bad["_quarantine_reason"].startswith("template_error:")
    assert "prompt_logprobs" in json.loads(bad["_params"])  # same keys as the gold pass
    (long,) = vr.render_turn(row, tok, eos, config(model_dir, max_model_len=32), k)
    assert long["_quarantine_reason"].startswith("prompt_too_long: prompt + gold is ")
    assert long["_quarantine_reason"].endswith("max_model_len 32")


# -- prompt_logprobs → gold positions → branch rows --------------------------------------------


def lp(logprob: float, rank: int) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": "x"}


# prompt of 2 tokens, gold [5, 6]: at gold 0 the policy prefers 9 (gold is rank 2);
# at gold 1 gold is top-1. Gold 1's gold token 6 sits below the top-2 (rank 4).
PLP_INT = [
    None,
    {3: lp(-0.1, 1)},
    {9: lp(-0.5, 1), 5: lp(-1.0, 2), 4: lp(-2.0, 3)},
    {6: lp(-0.2, 1), 7: lp(-2.5, 2), 2: lp(-3.0, 3)},
]


def test_gold_positions_from_int_and_str_keys():
    for plp in (
        PLP_INT,
        # after an Arrow struct round trip: str keys, other rows' keys null-filled
        [None if e is None else {str(t): v for t, v in e.items()} | {"99": None} for e in PLP_INT],
    ):
        pos = vr.gold_positions(plp, 2, [5, 6], k=2)
        assert [(p.index, p.gold_id, p.gold_logprob) for p in pos] == [(0, 5, -1.0), (1, 6, -0.2)]
        assert pos[0].top == [(9, -0.5), (5, -1.0)] and pos[0].diverges
        assert pos[1].top == [(6, -0.2), (7, -2.5)] and not pos[1].diverges
    assert vr.gold_positions(PLP_INT, 2, [5, 6])[0].top[-1] == (4, -2.0)  # k=None: all
    with pytest.raises(ValueError, match="gold token 1"):
        vr.gold_positions(PLP_INT, 2, [5, 8])
    with pytest.raises(ValueError, match="entries"):
        vr.gold_positions(PLP_INT, 3, [5, 6])


def gold_output_row(cfg: SampleConfig, **kw: Any) -> dict[str, Any]:
    row = {
        **vr._request(
            {"_turn_id": "t1", "_turn": '{"id": "t1"}'},
            "gold",
            [1, 3, 5, 6],
            vr.request_params(1, seed=0),
        ),
        "_n_prompt": 2,
        "_gold_ids": json.dumps([5, 6]),
        "_train_gold": "[5, 6]",
        "_params": json.dumps(vr.request_params(1, prompt_logprobs=2)),
        "_forward": 0,
        "generated_tokens": [9],
        "prompt_logprobs": PLP_INT,
        "logprobs": [{9: lp(-0.5, 1)}],
        "__inference_error__": "",
    }
    return vr.postprocess_row({**row, **kw})


def test_expand_gold_row_into_branch_and_sample_requests():
    branch = BranchConfig(top_k=2, lowest_k=0, max_branches=4)
    cfg = SampleConfig(
        engine="vllm", policy="p", mode="branch", max_tokens=6, seed=1, branch=branch
    )
    skip = {4}
    out = gold_output_row(cfg)
    assert out["prompt_logprobs"] is None and json.loads(out["_result"])["logprob"] == -0.5
    rows = vr.expand_gold_row(out, cfg, skip, [0])
    # the one divergent position (gold 0): alternative 9 (4 is special)
    assert [(r["_kind"], r["_branch_index"]) for r in rows] == [("branch", 0)]
    assert json.loads(rows[0]["_ids"]) == [1, 3, 9] and json.loads(rows[0]["_prefix"]) == [9]
    params = json.loads(rows[0]["_params"])
    assert params["temperature"] == 0.0 and params["max_tokens"] == 5
    assert rows[0]["_forward"] == 4 + 1 and rows[0]["_prefix_logprob"] == -0.5

    both = vr.expand_gold_row(out, cfg.model_copy(update={"mode": "both", "n": 2}), skip, [0])
    assert [r["_kind"] for r in both] == ["n_sample", "n_sample", "branch"]
    assert json.loads(both[0]["_ids"]) == [1, 3] and both[0]["_forward"] == 5
    assert both[1]["_forward"] == 0 and json.loads(both[1]["_params"])["seed"] == 2

    # no branch point: one idle row, no quarantine
    none = vr.expand_gold_row(
        gold_output_row(
            cfg, prompt_logprobs=[None, {3: lp(-0.1, 1)}, {5: lp(-0.1, 1)}, {6: lp(-0.1, 1)}]
        ),
        cfg,
        skip,
        [0],
    )
    assert [(r["_kind"], r["_quarantine_reason"], r["_forward"]) for r in none] == [
        ("idle", None, 5)
    ]

    err = vr.expand_gold_row({**out, "__inference_error__": "OOM", "_result": ""}, cfg, skip, [0])
    assert err[0]["_kind"] == "idle" and err[0]["_quarantine_reason"] == (
        "engine_error: gold request 0: OOM"
    )
    broken = gold_output_row(cfg, prompt_logprobs=PLP_INT[:3])
    (q,) = vr.expand_gold_row(broken, cfg, skip, [0])
    assert q["_quarantine_reason"].startswith("bad_prompt_logprobs:")


def test_assemble_turn_dedupes_and_counts():
    turn = {
        "id": "t1",
        "episode_id": "e",
        "turn_index": 1,
        "prompt": "[]",
        "tools": "[]",
        "gold": "{}",
        "gold_calls": "[]",
        "gold_text": "g",
        "shard": 3,
    }

    def cand(text: str, kind: str, index: int) -> dict[str, Any]:
        c = {"text": text, "source": kind, "branch_token_index": 2 if kind == "branch" else -1}
        return {
            "_turn_id": "t1",
            "_turn": json.dumps(turn),
            "_kind": kind,
            "_index": index,
            "_train_gold": "[1]",
            "_forward": 10,
            "_quarantine_reason": None,
            "_candidate": json.dumps(c),
        }

    rows = [cand("b", "branch", 0), cand("a", "n_sample", 1), cand("a", "n_sample", 0)]
    out = vr.assemble_turn(rows)
    assert [c["text"] for c in json.loads(out["candidates"])] == ["a", "b"]
    assert out["forward_tokens"] == 30 and out["shard"] == 3 and out["_quarantine_reason"] is None
    assert set(out) == set(SAMPLED_SCHEMA.names)
    bad = vr.assemble_turn([*rows, {**rows[0], "_quarantine_reason": "engine_error: x"}])
    assert bad["candidates"] == "[]" and bad["_quarantine_reason"] == "engine_error: x"


# -- the real Ray Data LLM Processor around a scripted engine stage ------------------------------


class ScriptedVLLM:
    """Answers request rows as vLLM's stage would, running the tiny HF model: full
    forwards (no cache), `prompt_logprobs` with int keys (top-K + the prompt token),
    greedy or seeded sampling up to `max_tokens` or an end of turn (kept, like vLLM).
    Rows of `fail` turns (`turn id → kind`) report an inference error instead."""

    def __init__(self, model_dir: str, fail: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.eos = set(eos_ids(vs._tokenizer(model_dir), self.model.generation_config.eos_token_id))
        self.fail = fail

    def logprobs(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            return torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)

    @staticmethod
    def entry(lps: Any, token: int, k: int) -> dict[int, dict[str, Any]]:
        top = lps.topk(k)
        out = {
            int(t): {"logprob": float(v), "rank": r + 1, "decoded_token": ""}
            for r, (v, t) in enumerate(zip(top.values, top.indices, strict=True))
        }
        if token not in out:
            rank = int((lps > lps[token]).sum()) + 1
            out[token] = {"logprob": float(lps[token]), "rank": rank, "decoded_token": ""}
        return out

    def answer(self, ids: list[int], sp: dict[str, Any]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"prompt_token_ids": ids, "num_input_tokens": len(ids)}
        lps = self.logprobs(ids)
        if sp.get("prompt_logprobs") is not None:
            k = sp["prompt_logprobs"]
            assert isinstance(k, int), k  # a float here would break vLLM's topk
            out["prompt_logprobs"] = [None] + [
                self.entry(lps[j - 1], ids[j], k) for j in range(1, len(ids))
            ]
        gen = torch.Generator().manual_seed(sp["seed"])
        seq, generated, logprobs = list(ids), [], []
        for _ in range(sp["max_tokens"]):
            last = lps[-1]
            if sp["temperature"] == 0:
                tok = int(last.argmax())
            else:
                probs = torch.softmax(last / sp["temperature"], -1)
                tok = int(torch.multinomial(probs, 1, generator=gen))
            generated.append(tok)
            logprobs.append(self.entry(last, tok, 1))
            if tok in self.eos:
                break
            seq.append(tok)
            lps = self.logprobs(seq)
        out.update(
            generated_tokens=generated, num_generated_tokens=len(generated), logprobs=logprobs
        )
        return out


def scripted_factory(model_dir: Path, fail: dict[str, str], calls: list[str]) -> Any:
    """`name → Processor`: Ray Data LLM's own `Processor` (preprocess, one stage,
    postprocess, continue on error) whose stage is `ScriptedVLLM`."""
    import ray
    from ray.llm._internal.batch.processor.base import OfflineProcessorConfig, Processor
    from ray.llm._internal.batch.stages.base import StatefulStage, StatefulStageUDF

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import tests

    class ScriptedEngineUDF(StatefulStageUDF):
        def __init__(self, data_column: str, expected_input_keys: list[str], **kw: Any) -> None:
            super().__init__(data_column, expected_input_keys)
            self.engine = ScriptedVLLM(**kw)

        async def udf(self, rows: list[dict[str, Any]]):
            from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

            for row in rows:  # the vLLM stage pops its inputs the same way
                prompt = row.pop("prompt", None) or ""
                ids = [int(t) for t in row.pop("tokenized_prompt")]
                sp = dict(row.pop("sampling_params"))
                base = {"__idx_in_batch": row["__idx_in_batch"], "batch_uuid": "b", "params": ""}
                if self.engine.fail.get(row["_turn_id"]) == row["_kind"]:
                    data = vLLMOutputData(prompt=prompt, num_input_tokens=0).model_dump()
                    err = "ValueError: scripted engine failure"
                    yield {
                        **data,
                        **base,
                        "request_id": -1,
                        "time_taken_llm": -1,
                        "__inference_error__": err,
                    }
                    continue
                data = vLLMOutputData(prompt=prompt, **self.engine.answer(ids, sp)).model_dump()
                yield {
                    **data,
                    **base,
                    "request_id": 0,
                    "time_taken_llm": 0.0,
                    "__inference_error__": "",
                }

    def factory(name: str) -> Any:
        calls.append(name)
        config = OfflineProcessorConfig(
            model_source="scripted", batch_size=16, should_continue_on_error=True
        )
        stage = StatefulStage(
            fn=ScriptedEngineUDF,
            fn_constructor_kwargs={"model_dir": str(model_dir), "fail": fail},
            map_batches_kwargs={"concurrency": 1, "num_cpus": 0.1},
        )
        return Processor(
            config, [stage], preprocess=vr.preprocess_row, postprocess=vr.postprocess_row
        )

    return factory


def run(
    ray_local: Any, cfg: SampleConfig, rows: list[dict[str, Any]], fail: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow as pa

    from ttpa_ray.schema.turns import TURN_SCHEMA

    calls: list[str] = []
    ds = ray_local.data.from_arrow(pa.Table.from_pylist(rows, schema=TURN_SCHEMA))
    out = vs.vllm_sample(ds, cfg, scripted_factory(Path(cfg.policy or ""), fail, calls))
    return sorted(out.take_all(), key=lambda r: r["id"]), calls


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_n_sample_through_ray_data_llm(ray_local, model_dir, turn_rows):
    rows = turn_rows[:3]
    cfg = config(model_dir, mode="n_sample")
    out, calls = run(ray_local, cfg, rows, fail={rows[1]["id"]: "n_sample"})
    assert calls == ["generate"]
    assert [r["id"] for r in out] == sorted(r["id"] for r in rows)  # one row per turn
    tok = vs._tokenizer(str(model_dir))
    by_id = {r["id"]: r for r in out}
    failed = by_id.pop(rows[1]["id"])
    assert failed["_quarantine_reason"] == (
        "engine_error: n_sample request 0: ValueError: scripted engine failure"
    )
    assert failed["candidates"] == "[]"
    for r in by_id.values():
        assert r["_quarantine_reason"] is None
        cands = json.loads(r["candidates"])
        assert 1 <= len(cands) <= cfg.n
        assert len({c["text"] for c in cands}) == len(cands)  # deduped
        for c in cands:
            assert c["source"] == "n_sample" and c["branch_token_index"] == -1
            assert c["token_ids"] == tokens.train_ids(tok, c["text"])
            assert c["logprob"] is not None and c["logprob"] < 0
        prompt = tokens.prompt_ids(tok, Turn.from_row(r))
        assert cfg.n * len(prompt) < r["forward_tokens"] <= cfg.n * (len(prompt) + cfg.max_tokens)
        assert json.loads(r["gold_ids"]) == tokens.train_ids(tok, r["gold_text"])


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_both_modes_through_ray_data_llm(ray_local, model_dir, turn_rows):
    rows = [*turn_rows[:3], {**turn_rows[3], "prompt": "not json"}]
    cfg = config(model_dir, mode="both")
    out, calls = run(ray_local, cfg, rows, fail={rows[2]["id"]: "branch"})
    assert calls == ["gold", "generate"] and len(out) == len(rows)
    by_id = {r["id"]: r for r in out}
    assert by_id[rows[3]["id"]]["_quarantine_reason"].startswith("template_error:")
    engine = by_id[rows[2]["id"]]
    assert engine["_quarantine_reason"].startswith("engine_error: branch request 0: ValueError")
    assert engine["candidates"] == "[]"
    tok, eos, _ = tok_eos(model_dir)
    for row in rows[:2]:
        r = by_id[row["id"]]
        assert r["_quarantine_reason"] is None
        turn = Turn.from_row(r)
        prompt, gold = tokens.prompt_ids(tok, turn), tokens.gold_ids(tok, turn, set(eos))
        cands = json.loads(r["candidates"])
        branches = [c for c in cands if c["source"] == "branch"]
        samples = [c for c in cands if c["source"] == "n_sample"]
        assert 1 <= len(samples) <= cfg.n and 1 <= len(branches) <= cfg.branch.max_branches
        for c in branches:
            i = c["branch_token_index"]
            ids = c["token_ids"]
            # the training tokenization of the text keeps the gold prefix and leaves it at i
            assert ids[:i] == gold[:i] and ids[i] != gold[i], (ids, gold, i)
            assert c["logprob"] is not None
        # gold pass (prompt + gold + 1) + n samples + branches, each prompt + new tokens
        low = len(prompt) + len(gold) + cfg.n * len(prompt)
        assert low < r["forward_tokens"]
        # the same branches as the HF reference sampler (greedy, same branch points)
        hf = hf_branches(model_dir, cfg, turn)
        got = [(c["branch_token_index"], c["text"], c["token_ids"]) for c in branches]
        assert got == [(c.branch_token_index, c.text, c.token_ids) for c in hf]
        for mine, ref in zip(branches, hf, strict=True):
            assert mine["logprob"] == pytest.approx(ref.logprob, abs=1e-3)


def hf_branches(model_dir: Path, cfg: SampleConfig, turn: Turn) -> list[Any]:
    from ttpa_ray.engines.hf_engine import HFEngine
    from ttpa_ray.sample.candidates import dedupe
    from ttpa_ray.sample.hf_sampler import HFSampler

    settings = SampleConfig(max_tokens=cfg.max_tokens, branch=cfg.branch)
    return dedupe(HFSampler(HFEngine(model_dir), settings).branch(turn).candidates)
