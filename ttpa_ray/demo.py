"""`make demo` / `ttpa-ray demo`: run, on the CPU default, every stage that exists so far.

First a showcase of the foundation (tool catalogs, the BFCL AST checker on BFCL's ground
truths, ESM on perturbed calls as a Ray Data stage), then the whole pipeline
(`configs/tiny-cpu.yaml` from `make demo`): construction, the tiny model, SFT, TPS, TTPA
and the response-level DPO baseline, serving each model on Ray Serve and evaluating it
over HTTP, and the HTML report with the headline table.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

AST_CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple"]


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def gold_calls(entry: Any) -> list[dict[str, Any]]:
    """An entry's ground truth as OpenAI-named calls (first acceptable values)."""
    from ttpa_ray.tools.bfcl import ground_truth_calls

    to_openai = {orig: new for new, orig in entry.name_map.items()}
    calls = ground_truth_calls(entry.possible_answer or [], entry.original_functions)
    return [{"name": to_openai.get(n, n), "arguments": a} for n, a in calls]


def demo_catalogs(out: Path) -> dict[str, Any]:
    from ttpa_ray.tools.catalog import load_bfcl, load_builtin, write_catalog

    _banner("tool catalogs")
    builtin = load_builtin()
    write_catalog(builtin, out / "tools" / "builtin", config={"from": "builtin"})
    domains = {d: len(t) for d, t in sorted(builtin.by_domain().items())}
    print(f"built-in: {len(builtin.tools)} tools in {len(domains)} domains: {domains}")
    bfcl = load_bfcl()
    counts = write_catalog(bfcl, out / "tools" / "bfcl", config={"from": "bfcl"})
    print(
        f"bfcl-eval {bfcl.extra['bfcl_version']}: {counts.rows_out} distinct tools from "
        f"{len(bfcl.extra['entries'])} entries ({counts.rows_quarantined} quarantined, "
        f"{bfcl.merged} identical repeats merged, {bfcl.variants} other definitions of a taken "
        "name kept with their questions)"
    )
    return {"builtin": builtin, "bfcl": bfcl}


def demo_ast(entries: list[Any]) -> dict[str, str]:
    from ttpa_ray.score.ast_checker import ast_check

    _banner("BFCL AST checker on BFCL's own ground truths")
    results = {}
    for cat in AST_CATEGORIES:
        rows = [e for e in entries if e.category == cat]
        ok = sum(ast_check(gold_calls(e), e.possible_answer, e.functions)[0] for e in rows)
        results[cat] = f"{ok}/{len(rows)}"
        print(f"{cat:>18}: {ok}/{len(rows)} judged valid")
    return results


def demo_esm(entries: list[Any], out: Path) -> dict[str, float]:
    from ttpa_ray.schema.io import read_rows
    from ttpa_ray.score.perturb import PERTURBATIONS, perturb_call
    from ttpa_ray.score.stage import run_score

    _banner("ESM on Ray Data: perturbed BFCL calls")
    rng = random.Random(0)
    rows: list[dict[str, Any]] = []
    for e in entries:
        if e.category not in ("simple_python", "multiple") or not e.possible_answer:
            continue
        gold = gold_calls(e)
        names = [t["function"]["name"] for t in e.functions]
        for kind in PERTURBATIONS:
            pred = [perturb_call(gold[0], names, kind, rng)]
            rows.append(
                {
                    "id": f"{e.id}:{kind}",
                    "kind": kind,
                    "pred": json.dumps(pred),
                    "gold": json.dumps(gold),
                    "tools": json.dumps(e.functions),
                }
            )
    # One deliberately unusable row, to show quarantine at work.
    rows.append({"id": "broken:gold", "kind": "broken", "pred": "[]", "gold": None, "tools": "[]"})
    src = out / "score" / "input.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), src)
    # `out` is the demo's own dir: a scored.parquet there without a marker (an older
    # version's demo) is moved aside, never deleted.
    counts = run_score(
        src, out / "score" / "scored.parquet", workers=1, num_cpus=0.5, overwrite=True
    )
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in read_rows(out / "score" / "scored.parquet"):
        by_kind[r["kind"]].append(r["esm_score"])
    means = {k: sum(v) / len(v) for k, v in by_kind.items()}
    print(
        f"rows_in={counts.rows_in} rows_out={counts.rows_out} quarantined={counts.rows_quarantined}"
    )
    for kind in PERTURBATIONS:
        print(f"  mean ESM {kind:>12}: {means[kind]:.3f}  (n={len(by_kind[kind])})")
    return means


def run_demo(out: Path, config: str | Path | None = None) -> dict[str, Any]:
    """The foundation showcase (catalogs, the AST checker on BFCL, ESM on Ray Data), then
    the whole pipeline (`ttpa_ray.pipeline`) with `config` into `out`; returns a summary."""
    from ttpa_ray.config import load_config
    from ttpa_ray.pipeline import run_pipeline
    from ttpa_ray.ray_utils import init_ray

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"ttpa-ray demo → {out}")
    cats = demo_catalogs(out)
    entries = cats["bfcl"].extra["entries"]
    summary: dict[str, Any] = {"ast_valid": demo_ast(entries)}
    init_ray(num_cpus=2)
    summary["esm_mean_by_perturbation"] = demo_esm(entries, out)
    cfg = load_config(config)
    grpo = " + GRPO" if cfg.pipeline.grpo_enabled else ""
    _banner(
        f"the TTPA pipeline: construct → model → SFT → TPS → TTPA + baseline{grpo} → eval → report"
    )
    state = run_pipeline(cfg, out / "run")
    summary["pipeline"] = {
        name: {k: v for k, v in rec.items() if k != "key"} for name, rec in state["stages"].items()
    }
    summary_path = out / "run" / "eval" / "summary.json"
    summary["eval"] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    _banner("done")
    print(f"report: {out / 'run' / 'report' / 'index.html'}")
    print(f"summary: {out / 'demo_summary.json'} ({summary['seconds']}s)")
    return summary
