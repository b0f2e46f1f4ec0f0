"""Run a suite against an OpenAI-compatible endpoint; compare runs.

`run_eval` writes into `out/`:

- `results.parquet`: one row per example, in suite order (`RESULT_SCHEMA`).
- `metrics.json`: `{"suite", "spec", "model", "endpoint", "n", "esm", "exact", "name_acc",
  "parse_rate", "ast"` and their 95% bootstrap intervals `"<metric>_ci": [lo, hi]`,
  `"errors", "context_length_exceeded", "by_category", "request_errors", "quarantined",
  ...suite facts}` (BFCL adds `bfcl_eval_version` and `"mode": "FC"`; held-out adds
  `holdout_tools` and `sampling`, see `ttpa_ray.eval.suites.load_heldout`).
- `quarantine.parquet`: inputs the suite could not turn into examples (stage
  `eval.<suite>`), and requests that failed after retries (stage `eval.request`, raw =
  the request). A failed request is also a results row scored 0 (see
  `ttpa_ray.eval.examples`), so `n` is always the number of examples.
- `manifest.json`: row accounting (`eval.<suite>`: inputs = examples + quarantined;
  `eval.request`: examples = answered + failed) and the settings.

The pipeline lays runs out as `<eval_root>/<model>/<suite>/`; `ttpa_ray.eval.summary.summarize`
reads that.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pyarrow as pa

from ttpa_ray.atomic import write_json_atomic
from ttpa_ray.eval.examples import Example, aggregate, score_prediction
from ttpa_ray.eval.suites import Suite, load_suite
from ttpa_ray.eval.summary import summarize

__all__ = ["RESULT_SCHEMA", "run_eval", "run_requests", "suite_dir_name", "summarize"]

RESULT_SCHEMA = pa.schema(
    [
        ("suite", pa.string()),
        ("category", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("id", pa.string()),
        ("model", pa.string()),
        ("esm", pa.float64()),
        ("exact", pa.bool_()),
        ("name_acc", pa.bool_()),
        ("parsed", pa.bool_()),
        ("ast", pa.bool_()),
        ("ast_error", pa.string()),
        ("error_type", pa.string()),
        ("pred", pa.string()),
        ("pred_calls", pa.string()),
        ("gold", pa.string()),
        ("latency_ms", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)
REQUEST_STAGE = "eval.request"


def _answer(engine: Any, example: Example, params: Any) -> dict[str, Any]:
    """Ask the endpoint; returns text or the error, latency and token usage. Never raises
    (an unexpected exception is an error of this example, not of the run)."""
    from ttpa_ray.engines.base import ChatRequest
    from ttpa_ray.engines.openai_engine import choice_text

    request = ChatRequest(example.messages, example.tools or None, request_id=example.id)
    t0 = time.perf_counter()
    text: str | None = None
    error: str | None = None
    usage: dict[str, Any] = {}
    try:
        choices, usage = engine.choices(request, params)
        text = choice_text(choices[0])
    except Exception as exc:  # noqa: BLE001 - one bad request must not end the run
        error = str(exc) or type(exc).__name__
    return {
        "text": text,
        "error": error,
        "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
    }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def run_requests(
    engine: Any,
    examples: list[Example],
    params: Any,
    max_concurrency: int,
    progress: bool = True,
    desc: str = "eval",
) -> list[dict[str, Any]]:
    """Answers to `examples`, in their order, with at most `max_concurrency` in flight."""
    from tqdm import tqdm

    answers: list[dict[str, Any] | None] = [None] * len(examples)
    workers = max(1, min(max_concurrency, len(examples)))
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool,
        tqdm(total=len(examples), desc=desc, unit="req", disable=not progress) as bar,
    ):
        futures = {pool.submit(_answer, engine, ex, params): i for i, ex in enumerate(examples)}
        for future in as_completed(futures):
            answers[futures[future]] = future.result()
            bar.update(1)
    return [a for a in answers if a is not None]


def suite_dir_name(spec: str) -> str:
    """The folder name of a suite's results under `<eval_root>/<model>/` (its kind)."""
    return spec.partition(":")[0]


def run_eval(
    endpoint: str,
    model: str,
    suite: str,
    out: Path,
    *,
    api_key: str | None = None,
    max_concurrency: int = 8,
    max_tokens: int = 512,
    temperature: float = 0.0,
    limit: int | None = None,
    distractors: int | None = None,
    seed: int = 0,
    max_turns: int | None = None,
    fit: Any = None,
    max_retries: int = 3,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` served at `endpoint` (base URL ending before `/chat/completions`,
    e.g. `http://127.0.0.1:8000/v1`) on `suite`; write the files listed in the module doc
    into `out` and return the metrics. Raises ValueError when the suite has no example.

    Held-out suite: `limit` turns sampled with `seed` from the turns with index <
    `max_turns` (`ttpa_ray.eval.suites.load_heldout`), fitted by `fit` as SFT and TPS
    fit theirs; `seed` also seeds the bootstrap intervals."""
    from ttpa_ray.engines.base import GenerationParams
    from ttpa_ray.engines.openai_engine import OpenAIEngine
    from ttpa_ray.schema.io import StageCounts, write_manifest, write_quarantine, write_rows
    from ttpa_ray.schema.records import QuarantineRecord

    loaded: Suite = load_suite(
        suite, limit=limit, distractors=distractors, seed=seed, max_turns=max_turns, fit=fit
    )
    if not loaded.examples:
        reasons = sorted({q.reason.split(":")[0] for q in loaded.quarantine})
        detail = f" ({len(loaded.quarantine)} quarantined: {', '.join(reasons)})" if reasons else ""
        raise ValueError(f"suite {suite!r} has no examples to evaluate{detail}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engine = OpenAIEngine(
        endpoint,
        model,
        api_key=api_key,
        max_concurrency=max_concurrency,
        max_retries=max_retries,
        timeout_s=timeout_s,
    )
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature)
    t0 = time.perf_counter()
    answers = run_requests(
        engine, loaded.examples, params, max_concurrency, progress, desc=f"eval {loaded.name}"
    )
    seconds = round(time.perf_counter() - t0, 3)

    rows: list[dict[str, Any]] = []
    quarantine = list(loaded.quarantine)
    for example, answer in zip(loaded.examples, answers, strict=True):
        row = score_prediction(example, answer["text"], answer["error"])
        row |= {
            "suite": loaded.name,
            "model": model,
            "latency_ms": answer["latency_ms"],
            "prompt_tokens": _int_or_none(answer["prompt_tokens"]),
            "completion_tokens": _int_or_none(answer["completion_tokens"]),
        }
        rows.append(row)
        if answer["error"] is not None:
            raw = {"messages": example.messages, "tools": example.tools}
            quarantine.append(
                QuarantineRecord.of(REQUEST_STAGE, example.id, row["error_type"], raw)
            )
    write_rows(out / "results.parquet", rows, RESULT_SCHEMA)
    write_quarantine(out / "quarantine.parquet", quarantine)

    failed = sum(1 for a in answers if a["error"] is not None)
    n = len(rows)
    metrics: dict[str, Any] = {
        "suite": loaded.name,
        "spec": suite,
        "model": model,
        "endpoint": endpoint,
        **aggregate(rows, seed=seed),
        "request_errors": failed,
        "quarantined": len(quarantine),
        "seconds": seconds,
        "mean_latency_ms": round(sum(r["latency_ms"] for r in rows) / n, 3),
        **loaded.info,
    }
    write_json_atomic(out / "metrics.json", metrics, indent=2, ensure_ascii=False)
    counts = [
        StageCounts(
            f"eval.{loaded.name}", n + len(loaded.quarantine), n, len(loaded.quarantine)
        ).check(),
        StageCounts(REQUEST_STAGE, n, n - failed, failed, seconds).check(),
    ]
    config = {
        "endpoint": endpoint,
        "model": model,
        "suite": suite,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "limit": limit,
        "distractors": distractors,
        "seed": seed,
        "max_turns": max_turns,
    }
    write_manifest(out, counts, config=config, extra={"metrics": "metrics.json"})
    return metrics
