"""Ray Train + DeepSpeed on 2 CPU workers: ZeRO-2 with a failure and restart, ZeRO-3 DPO
with a gathered export, LoRA export round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic_pairs import perturbed_pair_rows
from transformers import AutoModelForCausalLM

from ttpa_ray.config import TrainConfig
from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.io import read_rows, write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA, PAIR_SCHEMA
from ttpa_ray.tools.catalog import load_builtin
from ttpa_ray.train.logprobs import concat_logps
from ttpa_ray.train.trainer import run_training

TOOLS = load_builtin().tools


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eps") / "train.parquet"
    write_rows(path, [build_episode(s, TOOLS).to_row() for s in range(12)], EPISODE_SCHEMA)
    return path


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    write_rows(
        path, perturbed_pair_rows(16, kinds=("wrong_value",), rejected_score=0.6), PAIR_SCHEMA
    )
    return path


def cfg(**kw: Any) -> TrainConfig:
    base = {
        # SFT turns with the called tools + 1 (as tiny-cpu): prompts fit whole, never cut
        "max_len": 1536,
        "distractors": 1,
        "max_turns_per_episode": 2,
        "micro_batch_size": 4,
        "max_steps": 4,
        "lr": 3e-3,
        "warmup_steps": 1,
        "workers": 2,
        "cpus_per_worker": 0.5,
        "checkpoint_every": 2,
    }
    return TrainConfig.model_validate({**base, **kw})


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def exported_logps(out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    probe = json.loads((out / "final_logps.json").read_text())
    ids = torch.tensor(probe["input_ids"])
    mask = torch.tensor(probe["attention_mask"])
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True).eval()
    with torch.no_grad():
        mine = concat_logps(model, ids[:, :1], mask[:, :1], ids[:, 1:], mask[:, 1:])
    return mine, torch.tensor(probe["logps"])


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_sft_zero2_two_workers_survives_a_failure(ray_local, tmp_path, model_dir, episodes):
    out = tmp_path / "sft"
    manifest = run_training("sft", cfg(zero_stage=2, fail_once_at_step=3), episodes, model_dir, out)
    steps = [m["step"] for m in metrics(out)]
    # steps 1-3, the failure after 3, a restart from the step-2 checkpoint: 3 again, then 4
    assert steps == [1, 2, 3, 3, 4], steps
    assert (out / ".failed_once").read_text() == "3"
    assert manifest["steps"] == 4 and manifest["mode"] == "sft"
    # one example per tool-call turn (≤ 2 per episode) + a share of final answers
    counts = manifest["stages"][0]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_quarantined"]
    assert 12 <= counts["rows_out"] <= counts["rows_in"] <= 36
    losses = [m["loss"] for m in metrics(out)]
    # the loss continues identically after the resume: the replayed step 3 starts from the
    # step-2 checkpoint with the same data and RNG state as the first step 3
    assert losses[3] == pytest.approx(losses[2], rel=1e-4, abs=1e-6), losses
    assert losses[-1] < losses[0]
    assert all(m["tokens_per_s"] > 0 and m["mfu"] > 0 for m in metrics(out))
    assert list((out / "ray" / "tensorboard").glob("events.out.tfevents.*"))
    mine, trained = exported_logps(out)
    assert torch.allclose(mine, trained, atol=1e-4)


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_dpo_zero3_exports_gathered_weights(ray_local, tmp_path, model_dir, pairs_path):
    out = tmp_path / "dpo"
    settings = cfg(zero_stage=3, max_steps=6, checkpoint_every=3, dpo={"beta": 0.5})
    manifest = run_training("dpo", settings, pairs_path, model_dir, out)
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3, 4, 5, 6]
    # precomputed reference = the starting policy: the first loss is ln 2
    assert m[0]["loss"] == pytest.approx(0.6931, abs=2e-3)
    assert m[-1]["rewards/accuracy"] >= m[0]["rewards/accuracy"]
    assert m[-1]["rewards/margin"] > 0
    # every weight is there and trained (not one rank's ZeRO-3 shard, not the start)
    start = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).state_dict()
    done = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True).state_dict()
    assert set(start) == set(done)
    assert all(done[k].shape == start[k].shape for k in start)
    assert sum(not torch.equal(start[k], done[k]) for k in start) >= len(start) // 2
    mine, trained = exported_logps(out)
    assert torch.allclose(mine, trained, atol=1e-4)
    assert manifest["stages"][0]["rows_in"] == len(read_rows(pairs_path))
    # the reference log-probs are stored with the run (a re-run reuses them)
    ref = read_rows(out / "reference.parquet")
    assert len(ref) == 16 and all(len(r["ref_chosen"]) > 5 for r in ref)
    assert all(x <= 0 for r in ref for x in r["ref_chosen"])


def test_bad_training_inputs(tmp_path, model_dir, episodes):
    import shutil

    no_template = tmp_path / "no-template"
    shutil.copytree(model_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    cfg_path = no_template / "tokenizer_config.json"
    cfg_path.write_text(
        json.dumps(
            {k: v for k, v in json.loads(cfg_path.read_text()).items() if k != "chat_template"}
        )
    )
    with pytest.raises(ValueError, match="no chat template"):
        run_training("sft", cfg(), episodes, no_template, tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="no Parquet data"):
        run_training("sft", cfg(), tmp_path / "nothing", model_dir, tmp_path / "o")
    with pytest.raises(ValueError, match="lacks column"):
        run_training("dpo", cfg(), episodes, model_dir, tmp_path / "o")
    with pytest.raises(ValueError, match="unknown training mode"):
        run_training("ppo", cfg(), episodes, model_dir, tmp_path / "o")
    rows = read_rows(episodes)[:3]
    for r in rows:
        r["messages"] = r["messages"][:1]  # the user's query only: nothing to learn
    bad = tmp_path / "bad.parquet"
    write_rows(bad, rows, EPISODE_SCHEMA)
    with pytest.raises(ValueError, match="all 3 rows quarantined"):
        run_training("sft", cfg(), bad, model_dir, tmp_path / "q")
    q = read_rows(tmp_path / "q" / "quarantine.parquet")
    assert len(q) == 3 and all("no_tool_call_turn" in r["reason"] for r in q)
    with pytest.raises(ValueError, match="all 3 rows quarantined"):
        run_training("sft", cfg(examples="episodes"), bad, model_dir, tmp_path / "e")
    q = read_rows(tmp_path / "e" / "quarantine.parquet")
    assert len(q) == 3 and all("no assistant tokens" in r["reason"] for r in q)


@pytest.mark.timeout(300)
def test_reference_logps_are_stored_and_reused(
    ray_local, tmp_path, model_dir, pairs_path, monkeypatch
):
    from transformers import AutoTokenizer

    from ttpa_ray.train import trainer as tr
    from ttpa_ray.train.data import pair_example

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    rows = read_rows(pairs_path)[:4]

    def examples():
        return [pair_example(tok, r, 1536) for r in rows]

    first = examples()
    tr.reference_logps(first, model_dir, pairs_path, cfg(), tmp_path, tok.pad_token_id)
    assert all(len(e.extra["ref_chosen"]) == len(e.chosen_ids) for e in first)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although stored")

    monkeypatch.setattr(tr, "add_reference", boom)
    again = examples()
    tr.reference_logps(again, model_dir, pairs_path, cfg(), tmp_path, tok.pad_token_id)
    for a, b in zip(first, again, strict=True):
        assert a.extra["ref_chosen"] == pytest.approx(b.extra["ref_chosen"], abs=1e-6)
    with pytest.raises(AssertionError, match="recomputed"):  # another max_len: another key
        tr.reference_logps(
            examples(), model_dir, pairs_path, cfg(max_len=2048), tmp_path, tok.pad_token_id
        )


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_gradient_accumulation_1x8_equals_8x1(ray_local, tmp_path, model_dir, episodes):
    """One step over 8 rows is the same update whether the rows come as one micro-batch of
    8 or as 8 micro-batches of 1 accumulated (the loss is normalised over the whole
    batch's tokens, not per micro-batch)."""
    runs = {}
    for name, mb, accum in (("1x8", 8, 1), ("8x1", 1, 8)):
        out = tmp_path / name
        run_training(
            "sft",
            cfg(micro_batch_size=mb, grad_accum=accum, workers=1, max_steps=2, zero_stage=0),
            episodes,
            model_dir,
            out,
        )
        runs[name] = (metrics(out), exported_logps(out)[0])
    (m1, lp1), (m8, lp8) = runs["1x8"], runs["8x1"]
    assert [m["loss"] for m in m1] == pytest.approx([m["loss"] for m in m8], rel=1e-4)
    assert torch.allclose(lp1, lp8, atol=1e-4)
