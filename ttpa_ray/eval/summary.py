"""The comparison of a pipeline's models on one suite: `RUN_DIR/eval/summary.json`.

`summarize(eval_root)` reads `<eval_root>/<model>/<suite>/{metrics,results}` and returns

    {"<model>": {"esm", "exact", "ast", "name_acc", "parse_rate", "n",
                 "exact_ci", "esm_ci", "name_acc_ci", "parse_rate_ci", "ast_ci",
                 "context_length_exceeded"},
     ...,
     "paired": {"ttpa-sft": {"a": "ttpa", "b": "sft", "n",
                             "exact_diff", "ci", "esm_diff", "esm_ci",
                             "name_acc_diff", "name_acc_ci",
                             "parse_rate_diff", "parse_rate_ci"}, ...},
     "sampling": {...} | None}

Intervals are 95% percentile bootstrap intervals (`ttpa_ray.eval.stats`); a paired entry
is model a minus model b on the examples both answered (`ci` is exact-call accuracy's,
the headline metric). `sampling` is how the held-out suite was drawn (its `metrics.json`
`sampling`), the same for every model. `sft_warning` is the check the pipeline prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttpa_ray.eval.examples import CONTEXT_LENGTH_EXCEEDED, METRIC_COLUMNS
from ttpa_ray.eval.stats import paired_difference

# (a, b) pairs reported as a − b, when both models have results (grpo: with the stage on)
PAIRS = (
    ("ttpa", "sft"),
    ("ttpa", "dpo_response"),
    ("dpo_response", "sft"),
    ("grpo", "sft"),
    ("grpo", "ttpa"),
)
PAIRED_METRICS = ("exact", "esm", "name_acc", "parse_rate")
RESERVED_KEYS = ("paired", "sampling")  # top-level keys of summary.json that are not models
SFT_MIN_PARSE_RATE = 0.5
SFT_WARNING = "the SFT policy rarely emits tool calls; preference training has nothing to refine"


def _model_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = [*METRIC_COLUMNS, "n", *(f"{m}_ci" for m in METRIC_COLUMNS)]
    return {k: metrics.get(k) for k in keys} | {
        CONTEXT_LENGTH_EXCEEDED: metrics.get(CONTEXT_LENGTH_EXCEEDED, 0)
    }


def paired_entry(
    rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """`{"n", "exact_diff", "ci", "<metric>_diff", "<metric>_ci", ...}` for `PAIRED_METRICS`
    (a − b over results rows matched by id; `ci` is exact's interval)."""
    out: dict[str, Any] = {}
    for metric in PAIRED_METRICS:
        d = paired_difference(rows_a, rows_b, METRIC_COLUMNS[metric], seed=seed)
        out.setdefault("n", d["n"])
        out[f"{metric}_diff"] = d["diff"]
        out["ci" if metric == "exact" else f"{metric}_ci"] = d["ci"]
    return out


def summarize(
    eval_root: Path,
    suite: str = "heldout",
    seed: int = 0,
    pairs: tuple[tuple[str, str], ...] = PAIRS,
) -> dict[str, Any]:
    """The summary (module doc) for every model that has `suite`, models sorted by name.
    Paired differences need both models' `results.parquet`; a pair with a missing side is
    left out. Raises FileNotFoundError if `eval_root` is missing."""
    from ttpa_ray.schema.io import read_rows

    root = Path(eval_root)
    if not root.is_dir():
        raise FileNotFoundError(f"no eval runs at {root}")
    out: dict[str, Any] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    sampling = None
    for path in sorted(root.glob(f"*/{suite}/metrics.json")):
        model = path.parent.parent.name
        metrics = json.loads(path.read_text())
        out[model] = _model_entry(metrics)
        sampling = sampling or metrics.get("sampling")
        results = path.parent / "results.parquet"
        if results.exists():
            rows[model] = read_rows(results)
    out["paired"] = {
        f"{a}-{b}": {"a": a, "b": b, **paired_entry(rows[a], rows[b], seed)}
        for a, b in pairs
        if a in rows and b in rows
    }
    out["sampling"] = sampling
    return out


def sft_warning(summary: dict[str, Any], model: str = "sft") -> str | None:
    """The WARNING line when `model`'s held-out `parse_rate` is below 0.5 (None when it is
    not, or is unknown): below that, most sampled turns have no call to branch from and TTPA's
    pairs are mostly gold against prose."""
    entry = summary.get(model)
    rate = entry.get("parse_rate") if isinstance(entry, dict) else None
    if not isinstance(rate, int | float) or rate >= SFT_MIN_PARSE_RATE:
        return None
    return f"WARNING: {SFT_WARNING} ({model} parse_rate {rate:.3f} < {SFT_MIN_PARSE_RATE})"
