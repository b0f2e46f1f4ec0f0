"""`run_sample` on Ray Data: counts add up, pairs feed the trainer, resume, bad input, and
the openai engine against a local HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from http_fake import json_server
from transformers import AutoTokenizer

from ttpa_ray.config import SampleConfig
from ttpa_ray.sample.stage import run_sample
from ttpa_ray.schema.io import read_rows, write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA, PAIR_SCHEMA
from ttpa_ray.schema.token_classes import CLASSES
from ttpa_ray.train.data import pair_example

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def cfg(policy: Any, **kw: Any) -> SampleConfig:
    base = dict(
        policy=str(policy),
        distractors=1,
        max_turns_per_episode=2,
        shard_size=3,
        num_cpus=0.5,
        n=3,
        max_tokens=32,
    )
    return SampleConfig(**{**base, **kw})


def stage_counts(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {s["stage"]: s for s in manifest["stages"]}


@pytest.fixture(scope="module")
def bad_episodes(tmp_path_factory, episode_rows) -> Path:
    """The 6 good episodes + one whose first gold call names an unknown tool."""
    bad = json.loads(json.dumps(episode_rows[0]))
    bad["id"] = "ep-bad"
    for m in bad["messages"]:
        if m["role"] == "assistant" and m["tool_calls"]:
            m["tool_calls"][0]["function"]["name"] = "no_such_tool"
            break
    path = tmp_path_factory.mktemp("eps-bad") / "train.parquet"
    write_rows(path, [*episode_rows, bad], EPISODE_SCHEMA)
    return path


def test_hf_sample_end_to_end_and_resume(ray_local, tmp_path, tiny_model_dir, bad_episodes):
    out = tmp_path / "tps"
    m = run_sample(cfg(tiny_model_dir), bad_episodes, out, progress=False)
    counts = stage_counts(m)
    turns = counts["sample.turns"]
    assert turns["rows_in"] == turns["rows_out"] + turns["rows_quarantined"]
    assert (
        turns["rows_quarantined"] >= 1
        and counts["sample.candidates"]["rows_in"] == turns["rows_out"]
    )
    quarantine = read_rows(out / "quarantine.parquet")
    assert any(
        q["reason"].startswith("gold_unknown_tool") and q["row_id"].startswith("ep-bad")
        for q in quarantine
    )

    pairs = read_rows(out / "pairs.parquet")
    assert len(pairs) == m["pairs"] > 0
    assert pq.read_schema(out / "pairs.parquet").names == PAIR_SCHEMA.names
    assert {p["source"] for p in pairs} == {"n_sample", "branch"}
    assert m["candidates_by_source"]["branch"] > 0 and m["forward_tokens_per_pair"] > 0
    cands = read_rows(out / "candidates.parquet")
    assert len(cands) == counts["sample.score"]["rows_in"]
    assert all(0.0 <= c["esm_score"] <= 1.0 for c in cands)
    # Every pair is a usable training example for the DPO trainer.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for p in pairs:
        ex = pair_example(tok, p, max_len=4096)
        assert ex.chosen_ids != ex.rejected_ids
        assert p["chosen_score"] > p["rejected_score"] or p["chosen_text"] != p["rejected_text"]
    for name in ("trl", "sharegpt"):
        lines = (out / "export" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == len(pairs)
    # What the pairs decide: where branch pairs diverge (every one classified), and how
    # often a sample rather than gold was chosen (a chosen below 1.0 is always a sample).
    hist = m["branch_divergence"]
    assert set(hist) == set(CLASSES)
    assert sum(hist.values()) == sum(
        p["source"] == "branch" and p["branch_token_index"] >= 0 for p in pairs
    )
    sampled_turns = counts["sample.candidates"]["rows_out"]
    by_sample = {p["id"].rsplit(":p", 1)[0] for p in pairs if p["chosen_score"] < 1.0}
    assert len(by_sample) <= m["turns_best_at_threshold"] <= sampled_turns
    assert m["best_at_threshold_share"] == round(m["turns_best_at_threshold"] / sampled_turns, 4)

    # Re-running with the same inputs skips every shard; a changed setting re-runs them.
    again = run_sample(cfg(tiny_model_dir), bad_episodes, out, progress=False)
    assert again["shards_run"] == 0 and again["shards_skipped"] == 3
    assert again["pairs"] == m["pairs"]
    changed = run_sample(cfg(tiny_model_dir, threshold=0.5), bad_episodes, out, progress=False)
    assert changed["shards_run"] == 3
    assert changed["best_at_threshold_share"] >= m["best_at_threshold_share"]


def test_interrupted_run_resumes_the_remaining_shards(
    ray_local, tmp_path, tiny_model_dir, episodes_path
):
    out = tmp_path / "tps"
    c = cfg(tiny_model_dir, mode="branch", max_turns_per_episode=1)
    first = run_sample(c, episodes_path, out, progress=False, stop_after_shards=1)
    assert first == {"interrupted": True, "shards_run": 1, "shards_skipped": 0}
    done = run_sample(c, episodes_path, out, progress=False)
    assert done["shards_run"] == 1 and done["shards_skipped"] == 1
    assert set(done["pairs_by_source"]) == {"branch"}
    assert 0 < sum(done["branch_divergence"].values()) <= done["pairs"]


def test_bad_inputs_are_clear_errors(tmp_path, tiny_model_dir, episodes_path):
    with pytest.raises(FileNotFoundError, match="model directory"):
        run_sample(cfg(tmp_path / "nope"), episodes_path, tmp_path / "o1", progress=False)
    with pytest.raises(FileNotFoundError, match="no episodes"):
        run_sample(cfg(tiny_model_dir), tmp_path / "missing", tmp_path / "o2", progress=False)
    empty = tmp_path / "empty.parquet"
    write_rows(empty, [], EPISODE_SCHEMA)
    with pytest.raises(ValueError, match="no episodes"):
        run_sample(cfg(tiny_model_dir), empty, tmp_path / "o3", progress=False)
    with pytest.raises(ValueError, match="branching"):
        SampleConfig(engine="openai", policy="http://127.0.0.1:1/v1", model="m", mode="branch")


# -- openai engine against a local server ------------------------------------------------------


@pytest.fixture
def policy_server(episode_rows) -> Iterator[dict[str, Any]]:
    """Answers with the gold call (choice 0), a wrong-value call (1) and text (2); HTTP 500
    for prompts whose messages contain 'FAIL'."""

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "FAIL" in json.dumps(body["messages"]):
            return 500, {"error": {"message": "boom"}}
        tool = body["tools"][0]["function"]
        args = {k: "x" for k in tool["parameters"].get("required", [])}
        choices = [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c0",
                            "type": "function",
                            "function": {"name": tool["name"], "arguments": json.dumps(args)},
                        }
                    ],
                },
                "logprobs": {
                    "content": [
                        {"token": "a", "logprob": -0.5},
                        {"token": "b", "logprob": -0.25},
                    ]
                },
            },
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "not_a_tool", "arguments": "{}"},
                        }
                    ],
                },
            },
            {"index": 2, "message": {"role": "assistant", "content": "I am not sure."}},
        ][: body["n"]]
        return 200, {"choices": choices, "usage": {"prompt_tokens": 100, "completion_tokens": 20}}

    with json_server(respond) as srv:
        yield srv


def test_openai_engine_over_http(ray_local, tmp_path, episode_rows, policy_server):
    rows = json.loads(json.dumps(episode_rows[:3]))
    first_user = next(m for m in rows[2]["messages"] if m["role"] == "user")
    first_user["content"] += " FAIL"
    path = tmp_path / "eps.parquet"
    write_rows(path, rows, EPISODE_SCHEMA)
    c = SampleConfig(
        engine="openai",
        policy=policy_server["url"],
        model="policy",
        mode="n_sample",
        n=3,
        max_retries=0,
        max_turns_per_episode=2,
        num_cpus=0.5,
    )
    m = run_sample(c, path, tmp_path / "out", progress=False)
    counts = stage_counts(m)
    assert counts["sample.candidates"]["rows_quarantined"] == 2  # episode 2's two turns
    assert counts["sample.candidates"]["rows_out"] == 4
    assert all(body["n"] == 3 and body["logprobs"] is True for body in policy_server["seen"])
    assert all(body["tools"] for body in policy_server["seen"])
    q = [
        r
        for r in read_rows(tmp_path / "out" / "quarantine.parquet")
        if "engine_error" in r["reason"]
    ]
    assert len(q) == 2 and "boom" in q[0]["reason"]
    assert m["forward_tokens"] == 4 * 120
    cands = read_rows(tmp_path / "out" / "candidates.parquet")
    assert len(cands) == 12
    assert sorted({c["logprob"] for c in cands if c["logprob"] is not None}) == [-0.75]
    text_only = [c for c in cands if c["text"] == "I am not sure."]
    assert len(text_only) == 4 and all(c["esm_score"] == 0.0 for c in text_only)
