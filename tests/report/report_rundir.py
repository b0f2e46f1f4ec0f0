"""Synthetic run dirs for the report tests (imported by `conftest.py` and the tests): small, fake but well-formed versions of every
file `ttpa_ray.report` reads."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MODELS = ("sft", "dpo_response", "ttpa")
# headline numbers the tests look for (3-decimal renderings: 0.512, 0.601, 0.735, ...), in
# the shape `ttpa_ray.eval.summary.summarize` writes. By the headline's tie rule, ttpa is
# best in exact (paired intervals above 0, although its own interval overlaps dpo's), ESM
# and AST (no paired AST: the intervals do not overlap); not in tool-name accuracy (paired
# interval vs dpo_response includes 0) nor parse rate (equal to dpo_response's: a tie).
SUMMARY: dict[str, Any] = {
    "sft": {
        "esm": 0.5121,
        "exact": 0.402,
        "ast": 0.451,
        "name_acc": 0.62,
        "parse_rate": 0.81,
        "n": 400,
        "esm_ci": [0.47, 0.555],
        "exact_ci": [0.355, 0.45],
        "ast_ci": [0.4, 0.5],
        "name_acc_ci": [0.57, 0.67],
        "parse_rate_ci": [0.77, 0.85],
        "context_length_exceeded": 0,
    },
    "dpo_response": {
        "esm": 0.6013,
        "exact": 0.463,
        "ast": None,
        "name_acc": 0.7,
        "parse_rate": 0.9,
        "n": 400,
        "esm_ci": [0.56, 0.645],
        "exact_ci": [0.415, 0.512],
        "ast_ci": None,
        "name_acc_ci": [0.655, 0.745],
        "parse_rate_ci": [0.87, 0.93],
        "context_length_exceeded": 0,
    },
    "ttpa": {
        "esm": 0.7351,
        "exact": 0.558,
        "ast": 0.604,
        "name_acc": 0.715,
        "parse_rate": 0.9,
        "n": 400,
        "esm_ci": [0.695, 0.775],
        "exact_ci": [0.51, 0.607],
        "ast_ci": [0.55, 0.65],
        "name_acc_ci": [0.67, 0.76],
        "parse_rate_ci": [0.87, 0.93],
        "context_length_exceeded": 2,
    },
    "paired": {
        "ttpa-sft": {
            "a": "ttpa",
            "b": "sft",
            "n": 400,
            "exact_diff": 0.156,
            "ci": [0.11, 0.2],
            "esm_diff": 0.223,
            "esm_ci": [0.19, 0.26],
            "name_acc_diff": 0.095,
            "name_acc_ci": [0.06, 0.13],
            "parse_rate_diff": 0.09,
            "parse_rate_ci": [0.06, 0.12],
        },
        "ttpa-dpo_response": {
            "a": "ttpa",
            "b": "dpo_response",
            "n": 400,
            "exact_diff": 0.095,
            "ci": [0.05, 0.14],
            "esm_diff": 0.1338,
            "esm_ci": [0.1, 0.17],
            "name_acc_diff": 0.015,
            "name_acc_ci": [-0.02, 0.05],
            "parse_rate_diff": 0.0,
            "parse_rate_ci": [-0.02, 0.02],
        },
    },
    "sampling": {
        "requested": 400,
        "pool": 1234,
        "n": 400,
        "seed": 0,
        "max_turns": 2,
        "took_all": False,
        "strata": {"seen_tools/k0": {"pool": 600, "n": 194}},
    },
}
MISMATCH_STAGE = "sample"  # its rows_in != rows_out + rows_quarantined


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _write_parquet(path: Path, cols: dict[str, list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def pipeline_json() -> dict[str, Any]:
    stages = [
        ("construct", "done", 12.5, 200, 190, 10),
        ("model", "skipped", 0.0, None, None, None),
        ("sft", "done", 30.2, 150, 150, 0),
        (MISMATCH_STAGE, "done", 45.0, 100, 90, 5),  # 5 rows lost: flagged
        ("ttpa", "done", 20.1, 80, 80, 0),
        ("dpo_response", "failed", 3.3, None, None, None),
        ("eval", "done", 60.0, None, None, None),
    ]
    return {
        "stages": [
            {
                "name": n,
                "status": s,
                "seconds": sec,
                "rows_in": a,
                "rows_out": b,
                "rows_quarantined": c,
            }
            for n, s, sec, a, b, c in stages
        ],
        "config": {"pipeline": {"model": "tiny", "eval_suites": ["heldout"]}, "seed": 0},
    }


def make_run_dir(root: Path, *, partial: bool = False) -> Path:
    """A run dir with every input the report reads (or only pipeline.json if `partial`)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "pipeline.json", pipeline_json())
    if partial:
        return root

    # the driver's node timeline: one node, a worker added for sampling
    (root / "cluster").mkdir(exist_ok=True)
    timeline = [
        {
            "t": 1000.0 + i * 5,
            "stage": stage,
            "nodes": n,
            "cpus": 2 * n,
            "gpus": 0,
            "workers": n - 1,
        }
        for i, (stage, n) in enumerate(
            [("construct", 1), ("sft", 1), ("sample", 1), ("sample", 2), ("ttpa", 2), ("ttpa", 1)]
        )
    ]
    (root / "cluster" / "nodes.jsonl").write_text("\n".join(json.dumps(r) for r in timeline))

    # construct
    _write_json(
        root / "construct" / "manifest.json",
        {
            "teacher": "schema",
            "catalog": "builtin",
            "config_hash": "abc123",
            "quarantined": 10,
            "splits": {"train": 150, "val": 20, "test": 20},
            "stages": [
                {
                    "stage": "construct",
                    "rows_in": 200,
                    "rows_out": 190,
                    "rows_quarantined": 10,
                    "seconds": 12.0,
                },
                {
                    "stage": "construct.scene",
                    "rows_in": 200,
                    "rows_out": 195,
                    "rows_quarantined": 5,
                    "seconds": 3.0,
                },
            ],
            "quarantine_reasons": {"schema_violation": 7, "empty_query": 3},
            "stats": {"tools_called": 12, "share_parallel_turn": 0.25},
        },
    )
    (root / "construct" / "card.md").write_text(
        "# Dataset card: ttpa-ray constructed episodes\n\n"
        "Teacher: `schema`; catalog: `builtin` <script>alert(1)</script>\n\n"
        "| split | episodes |\n|---|---|\n| train | 150 |\n| test | 20 |\n\n"
        "- tools called: 12\n- quarantine reasons: 2\n"
    )

    # training curves
    for m in MODELS:
        recs = []
        for step in range(1, 21):
            r: dict[str, Any] = {
                "step": step,
                "loss": 2.0 / step + rng.random() * 0.05,
                "lr": 1e-4,
                "tokens_per_s": 1000.0 + step,
            }
            if m != "sft":
                r |= {
                    "rewards/accuracy": min(1.0, step / 15),
                    "rewards/margin": step * 0.1,
                    "rewards/chosen": step * 0.05,
                    "rewards/rejected": -step * 0.05,
                }
            recs.append(r)
        path = root / m / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    # TPS sampling
    _write_json(
        root / "sample" / "manifest.json",
        {
            "pairs": 40,
            "pairs_by_source": {"n_sample": 25, "branch": 15},
            "candidates_by_source": {"n_sample": 60, "branch": 30},
            "forward_tokens_per_pair": 123.4,
            "mean_candidate_esm": 0.62,
            "turns_best_at_threshold": 9,
            "best_at_threshold_share": 0.3,
            "branch_divergence": {
                "tag": 1,
                "tool_name": 2,
                "arg_key": 3,
                "arg_value": 7,
                "punctuation": 2,
                "text": 0,
            },
            "config": {"threshold": 0.8},
            "stages": [
                {
                    "stage": "sample.turns",
                    "rows_in": 30,
                    "rows_out": 30,
                    "rows_quarantined": 0,
                    "seconds": 1.0,
                }
            ],
        },
    )
    n_c = 90
    srcs = ["n_sample"] * 60 + ["branch"] * 30
    _write_parquet(
        root / "sample" / "candidates.parquet",
        {
            "turn_id": [f"t{i % 30}" for i in range(n_c)],
            "episode_id": [f"e{i % 10}" for i in range(n_c)],
            "turn_index": [i % 3 for i in range(n_c)],
            "source": srcs,
            "branch_token_index": [-1 if s == "n_sample" else rng.randint(0, 40) for s in srcs],
            "text": ["<tool_call>{}</tool_call>"] * n_c,
            "logprob": [-rng.random() * 10 for _ in range(n_c)],
            "esm_score": [round(rng.random(), 3) for _ in range(n_c)],
            "esm_reason": ["ok"] * n_c,
        },
    )
    psrc = ["n_sample"] * 25 + ["branch"] * 15
    chosen = [1.0 if s == "n_sample" else 0.8 + 0.2 * rng.random() for s in psrc]
    _write_parquet(
        root / "sample" / "pairs.parquet",
        {
            "id": [f"t{i}:p0" for i in range(40)],
            "source": psrc,
            "chosen_score": chosen,
            "rejected_score": [c - 0.1 - 0.5 * rng.random() for c in chosen],
            "branch_token_index": [-1 if s == "n_sample" else rng.randint(1, 30) for s in psrc],
        },
    )

    # eval
    _write_json(root / "eval" / "summary.json", SUMMARY)
    cats = ["simple", "multiple", "parallel"]
    for m in MODELS:
        n = 30
        esm = [rng.random() for _ in range(n)]
        exact = [e > 0.5 for e in esm]
        ast = [None if m == "dpo_response" else e > 0.4 for e in esm]
        err = [None if x else rng.choice(["wrong_name", "bad_args", "no_call"]) for x in exact]
        cat = [cats[i % 3] for i in range(n)]
        _write_parquet(
            root / "eval" / m / "heldout" / "results.parquet",
            {
                "suite": ["heldout"] * n,
                "category": cat,
                "id": [f"q{i}" for i in range(n)],
                "model": [m] * n,
                "esm": esm,
                "exact": exact,
                "ast": pa.array(ast, type=pa.bool_()),
                "error_type": pa.array(err, type=pa.string()),
                "pred": ["{}"] * n,
                "gold": ["{}"] * n,
                "latency_ms": [10.0 + i for i in range(n)],
            },
        )
        s = SUMMARY[m]
        _write_json(
            root / "eval" / m / "heldout" / "metrics.json",
            {
                **{k: v for k, v in s.items() if k != "n"},
                "n": n,
                "sampling": SUMMARY["sampling"],
                "errors": dict(sorted({e: err.count(e) for e in err if e}.items())),
                "by_category": {
                    c: {
                        "n": cat.count(c),
                        "esm": sum(e for e, k in zip(esm, cat, strict=True) if k == c) / 10,
                        "exact": sum(x for x, k in zip(exact, cat, strict=True) if k == c) / 10,
                        "ast": None if m == "dpo_response" else 0.5,
                    }
                    for c in cats
                },
            },
        )
    return root
