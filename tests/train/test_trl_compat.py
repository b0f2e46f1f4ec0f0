"""TRL's `DPOTrainer` trains on our `sample/export/trl.jsonl` as written, on the tiny model.

Needs `trl` (and the `datasets` it installs); skipped without them. CPU only, no downloads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.sample.candidates import Candidate
from ttpa_ray.sample.pairs import ScoredCandidate, pair_rows, to_trl
from ttpa_ray.schema.turns import episode_turns
from ttpa_ray.tools.catalog import load_builtin

trl = pytest.importorskip("trl", reason="TRL not installed (pip install trl)")
datasets = pytest.importorskip("datasets", reason="datasets not installed (TRL requires it)")

pytestmark = pytest.mark.e2e
TOOLS = load_builtin().tools


def write_trl_jsonl(path: Path) -> list[dict]:
    """Pairs (gold vs a call with an extra argument) exported as the sample stage writes them."""
    rows = []
    for seed in range(4):
        turns, _ = episode_turns(build_episode(seed, TOOLS).to_row(), distractors=1)
        for turn in (t.to_row() for t in turns[:2]):
            worse = turn["gold_text"].replace('"arguments": {', '"arguments": {"zzz": 1, ', 1)
            rows += pair_rows(turn, [ScoredCandidate(Candidate(worse, "n_sample"), 0.5)], 0.8)
    with path.open("w", encoding="utf-8") as fh:  # as sample/stage.py writes export/trl.jsonl
        for r in rows:
            fh.write(json.dumps(to_trl(r), ensure_ascii=False) + "\n")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dpo_trainer_runs_two_steps_on_trl_jsonl(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model
    written = write_trl_jsonl(tmp_path / "trl.jsonl")
    assert len(written) >= 4
    dataset = datasets.load_dataset("json", data_files=str(tmp_path / "trl.jsonl"), split="train")
    assert dataset["tools"] == [r["tools"] for r in written]  # tool schemas survive Arrow

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=None,
        seed=0,
    )
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    # TRL tokenized the prompt exactly as our chat template does (tools included), so no
    # prompt tokens were lost where prompt and prompt+completion diverge.
    for row, prompt_ids in zip(written, trainer.train_dataset["prompt_ids"], strict=True):
        expected = tok.apply_chat_template(
            row["prompt"], tools=row["tools"], add_generation_prompt=True, tokenize=True
        )
        assert prompt_ids == list(expected["input_ids"])
    trainer.train()

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
