"""`make demo` / `ttpa-ray demo`: run, on the CPU default, every stage that exists so far.

Today: tool catalogs (built-in + BFCL), the BFCL AST checker on BFCL's ground truths,
reversed construction with the schema teacher, ESM scoring of perturbed calls as a Ray
Data stage, the tiny model factory (tokenizer + model + chat template + tool-call parser),
SFT of the tiny model on Ray Train + DeepSpeed, TPS (n-sample + token-level branches from
the SFT policy, ESM, pairs) and token-level DPO on those pairs. Serving and evaluation
join as their issues land; the demo says so.
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
NOT_YET = ["serve", "eval", "report"]


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


def demo_construct(out: Path) -> dict[str, Any]:
    from ttpa_ray.config import ConstructConfig
    from ttpa_ray.construct.stage import run_construct

    _banner("reversed construction on Ray Data (schema teacher, built-in catalog)")
    cfg = ConstructConfig.model_validate(
        {"n_episodes": 200, "shard_size": 100, "num_cpus": 0.5, "split": {"holdout_tools": 4}}
    )
    manifest = run_construct(cfg, out / "construct", progress=False)
    stats = manifest["stats"]
    print(f"episodes {manifest['splits']}, quarantined {manifest['quarantined']}")
    print(
        f"calls per episode {stats['calls_per_episode']}; memory reuse "
        f"{stats['share_memory_reuse']:.0%}; parallel turns {stats['share_parallel_turn']:.0%}"
    )
    print(f"held-out tools: {manifest['holdout_tools']}; card: {out / 'construct' / 'card.md'}")
    return {"splits": manifest["splits"], "quarantined": manifest["quarantined"]}


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
    counts = run_score(src, out / "score" / "scored.parquet", workers=1, num_cpus=0.5)
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


def demo_tiny_model(builtin: Any, out: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttpa_ray.schema.tool_call_text import parse_tool_calls
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    _banner("tiny model factory (untrained: it babbles; the parser must not mind)")
    tools = builtin.openai()
    model_dir = create_tiny_model_dir(catalog_texts(tools), out / "tiny-model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "What's the weather in Lisbon tomorrow?"}]
    enc: Any = tok.apply_chat_template(
        messages, tools=tools[:5], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_len = int(enc["input_ids"].shape[1])
    gen = model.generate(**enc, max_new_tokens=24, do_sample=False)
    text = str(tok.decode(gen[0, prompt_len:], skip_special_tokens=True))
    parsed = parse_tool_calls(text)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model dir: {model_dir} ({n_params / 1e6:.2f}M params, vocab {len(tok)})")
    print(f"prompt tokens: {prompt_len}; generated: {text[:80]!r}")
    print(f"parsed tool calls: {len(parsed.tool_calls)}; parse errors: {parsed.errors[:2]}")
    return {"params": n_params, "vocab": len(tok)}


def demo_sft(out: Path) -> dict[str, Any]:
    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.trainer import run_training

    _banner("SFT of the tiny model on the constructed episodes (Ray Train + DeepSpeed, CPU)")
    cfg = TrainConfig.model_validate(
        {
            "max_len": 512,
            "micro_batch_size": 8,
            "max_steps": 30,
            "lr": 3e-3,
            "warmup_steps": 3,
            "workers": 1,
            "cpus_per_worker": 1,
            "checkpoint_every": 30,
        }
    )
    manifest = run_training("sft", cfg, out / "construct", out / "tiny-model", out / "sft")
    losses = [
        json.loads(line)["loss"]
        for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()
    ]
    print(f"{manifest['steps']} steps: loss {losses[0]:.3f} → {losses[-1]:.3f}")
    print(f"exported model: {manifest['model']}")
    return {"steps": manifest["steps"], "loss_first": losses[0], "loss_last": losses[-1]}


def demo_tps(out: Path) -> dict[str, Any]:
    from ttpa_ray.config import SampleConfig
    from ttpa_ray.sample.stage import run_sample

    _banner("TPS: n-sample + token-level branches from the SFT policy, ESM, pairs (Ray Data)")
    cfg = SampleConfig(
        policy=str(out / "sft" / "model"),
        mode="both",
        n=4,
        max_tokens=96,
        distractors=1,
        max_turns_per_episode=1,
        max_episodes=12,
        shard_size=6,
        num_cpus=0.5,
    )
    m = run_sample(cfg, out / "construct", out / "sample", progress=False)
    print(
        f"{m['pairs']} pairs {m['pairs_by_source']} from {m['turns_with_pairs']} turns; "
        f"mean candidate ESM {m.get('mean_candidate_esm')}; "
        f"{m.get('forward_tokens_per_pair')} forward tokens per pair"
    )
    return {k: m.get(k) for k in ("pairs", "pairs_by_source", "forward_tokens_per_pair")}


def demo_dpo(out: Path) -> dict[str, Any]:
    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.trainer import run_training

    _banner("token-level DPO on the TPS pairs (Ray Train + DeepSpeed, CPU)")
    cfg = TrainConfig.model_validate(
        {
            "max_len": 2048,
            "micro_batch_size": 8,
            "max_steps": 10,
            "lr": 1e-3,
            "warmup_steps": 1,
            "workers": 1,
            "cpus_per_worker": 1,
            "checkpoint_every": 10,
            "dpo": {"loss_type": "sigmoid", "beta": 0.1, "token_level": True},
        }
    )
    manifest = run_training("dpo", cfg, out / "sample", out / "sft" / "model", out / "dpo")
    rows = [json.loads(x) for x in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    print(
        f"{manifest['steps']} steps: loss {rows[0]['loss']:.3f} → {rows[-1]['loss']:.3f}, "
        f"reward accuracy {rows[-1]['rewards/accuracy']:.2f}"
    )
    return {
        "steps": manifest["steps"],
        "loss_first": rows[0]["loss"],
        "loss_last": rows[-1]["loss"],
        "accuracy_last": rows[-1]["rewards/accuracy"],
    }


def run_demo(out: Path) -> dict[str, Any]:
    """Run the foundation demo into `out`; returns the figures it printed."""
    from ttpa_ray.ray_utils import init_ray

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"ttpa-ray demo → {out}")
    print("The full TTPA pipeline is not built yet: this demo runs the stages that exist.")
    cats = demo_catalogs(out)
    entries = cats["bfcl"].extra["entries"]
    summary: dict[str, Any] = {"ast_valid": demo_ast(entries)}
    init_ray(num_cpus=2)
    summary["construct"] = demo_construct(out)
    summary["esm_mean_by_perturbation"] = demo_esm(entries, out)
    summary["tiny_model"] = demo_tiny_model(cats["builtin"], out)
    summary["sft"] = demo_sft(out)
    summary["tps"] = demo_tps(out)
    summary["dpo"] = demo_dpo(out)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    _banner("done")
    print(f"summary: {out / 'demo_summary.json'} ({summary['seconds']}s)")
    print(f"not built yet (issues #7-#8): {', '.join(NOT_YET)}")
    return summary
