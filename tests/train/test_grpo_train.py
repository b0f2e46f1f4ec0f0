"""GRPO on Ray Train (CPU): a group's rollouts share one prompt forward and are seeded;
a short run from a briefly SFT-trained tiny model raises the reward; a run that fails
resumes from its checkpoint with the same steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from turn_training import FIRST_TURN

from ttpa_ray.config import SampleConfig, TrainConfig
from ttpa_ray.engines.base import eos_ids
from ttpa_ray.sample.hf_sampler import HFSampler, PolicyView
from ttpa_ray.schema.io import read_rows
from ttpa_ray.tools.catalog import load_builtin
from ttpa_ray.train.grpo_loop import grpo_prompts
from ttpa_ray.train.trainer import run_training

TOOLS = load_builtin().tools
EPISODES = 8


@pytest.fixture(scope="module")
def episodes(sft_episodes) -> Path:
    return sft_episodes  # tests/conftest.py: the turns `sft_policy` was trained on


def cfg(**kw: Any) -> TrainConfig:
    return TrainConfig.model_validate({**FIRST_TURN, **kw})


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def grpo_cfg(**kw: Any) -> TrainConfig:
    grpo = {"group_size": 4, "prompts_per_step": 4, "max_tokens": 96, "kl_beta": 0.0}
    grpo.update(kw.pop("grpo", {}))
    return cfg(micro_batch_size=16, lr=3e-4, warmup_steps=1, grpo=grpo, **kw)


# -- rollouts (no Ray) ---------------------------------------------------------------------


def test_a_group_shares_one_prompt_forward_and_is_seeded(compact_model, episodes):
    tok = AutoTokenizer.from_pretrained(compact_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(compact_model, local_files_only=True).eval()
    prompts, bad = grpo_prompts(tok, read_rows(episodes), grpo_cfg())
    assert prompts and len(prompts) + len(bad) >= EPISODES
    eos = eos_ids(tok, model.generation_config.eos_token_id)
    view = PolicyView(model, tok, eos, torch.device("cpu"), 2048)
    sampler = HFSampler(view, SampleConfig(n=4, temperature=1.0, max_tokens=24, seed=3))
    p = prompts[0].prompt_ids
    seqs, logps, forwarded = sampler.group(p, 4, 24, "0:a")
    assert len(seqs) == 4 and all(1 <= len(s) <= 24 for s in seqs)
    # the prompt once for the whole group, then each decoded token but the last once
    assert forwarded == len(p) + sum(len(s) - 1 for s in seqs)
    assert all(lp < 0 for lp in logps)
    again, _, _ = sampler.group(p, 4, 24, "0:a")
    other, _, _ = sampler.group(p, 4, 24, "1:a")
    assert again == seqs  # the same (seed, key): the same group
    assert other != seqs
    naive = HFSampler(view, SampleConfig(n=4, max_tokens=24, seed=3, kv_reuse=False))
    same, _, cost = naive.group(p, 4, 24, "0:a")
    assert same == seqs and cost == forwarded + 3 * len(p)


def test_grpo_prompts_are_the_sft_prompts_and_long_ones_are_quarantined(compact_model, episodes):
    from ttpa_ray.train.data import fitted_turns, turn_prompt_ids

    tok = AutoTokenizer.from_pretrained(compact_model, local_files_only=True)
    rows = read_rows(episodes)
    prompts, _ = grpo_prompts(tok, rows, grpo_cfg())
    turns = [t for r in rows for t in fitted_turns(tok, r, 1, 1)[0]]
    assert [p.prompt_ids for p in prompts] == [turn_prompt_ids(tok, t) for t in turns]
    assert json.loads(prompts[0].gold_calls) == turns[0].gold_calls
    short = grpo_cfg(max_len=120)  # 120 - 96 new tokens: no prompt fits
    none, bad = grpo_prompts(tok, rows, short)
    assert not none and all(b.reason.startswith("too_long") for b in bad)


# -- training (Ray Train) --------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_grpo_raises_the_reward_and_resumes_the_same_steps(
    ray_local, tmp_path, sft_policy, episodes
):
    """One run (one Ray Train fit, to keep CI short) checks both: the worker fails once
    after step 12, the group restarts from the step-10 checkpoint and replays steps 11-12
    with the same rollouts; over the 20 steps the mean reward of the last 20% is above
    the first 20%."""
    out = tmp_path / "grpo"
    settings = grpo_cfg(
        max_steps=20,
        checkpoint_every=5,
        fail_once_at_step=12,
        grpo={"group_size": 8, "prompts_per_step": 4},
    )
    manifest = run_training("grpo", settings, episodes, sft_policy, out)
    m = metrics(out)
    # steps 1-12, the failure after 12, a restart from the step-10 checkpoint: 11, 12 again
    assert [x["step"] for x in m] == [*range(1, 13), 11, 12, *range(13, 21)]
    assert manifest["mode"] == "grpo" and manifest["steps"] == 20
    assert (out / "model" / "model.safetensors").exists()
    # the replayed steps sample the same rollouts from the same restored policy
    for before, again in ((m[10], m[12]), (m[11], m[13])):
        for key in ("reward", "rollout_tokens", "loss", "lr"):
            assert again[key] == pytest.approx(before[key], rel=1e-4, abs=1e-6), key
    steps = [*m[:10], *m[12:]]  # each step once (the replayed ones as rerun)
    rewards = [round(x["reward"], 3) for x in steps]
    assert sum(rewards[-4:]) > sum(rewards[:4]), rewards  # last 20% vs first 20%
    for x in m:
        assert {"reward/esm", "reward/name", "reward/key", "reward/value", "exact"} <= x.keys()
        assert 0 <= x["parse_rate"] <= 1 and 0 <= x["zero_var_groups"] <= 1
        assert x["rollout_tokens"] > 0 and x["rollout_tokens_per_s"] > 0
        assert x["clip_frac"] == 0.0 and x["ratio_mean"] == pytest.approx(1.0)  # one pass


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_grpo_epochs_per_batch_clip_and_kl(ray_local, tmp_path, sft_policy, episodes):
    """Two passes over each rollout batch with a KL term: the second pass's ratio moves off
    1 (the clip can act), and the policy drifts from the reference (KL > 0)."""
    out = tmp_path / "grpo2"
    settings = grpo_cfg(
        max_steps=2,
        checkpoint_every=2,
        grpo={"prompts_per_step": 2, "epochs_per_batch": 2, "kl_beta": 0.04},
    )
    run_training("grpo", settings, episodes, sft_policy, out)
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2]
    # step 1's first update runs at the warmup's LR of 0 (DeepSpeed's WarmupCosineLR starts
    # at 0), so only step 2's second pass sees a moved policy
    assert m[-1]["ratio_mean"] != pytest.approx(1.0, abs=1e-7)
    assert m[-1]["kl"] > 0
