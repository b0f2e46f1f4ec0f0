"""`ttpa-ray` command line. Each subcommand is a thin shell over a stage's Python API.

Exit codes: 0 success, 1 the input had invalid items (e.g. `tools validate`), 2 the
command could not run (bad arguments, missing or unreadable input).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("ttpa_ray")
EXPORT_FORMATS = ("openai-jsonl", "sharegpt")  # keys of construct.dataset.EXPORTERS


class UsageError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_tools_validate(args: argparse.Namespace) -> int:
    from ttpa_ray.schema.io import write_quarantine
    from ttpa_ray.tools.catalog import load_file

    cat = load_file(args.file)
    for q in cat.quarantine:
        print(f"INVALID {q.row_id}: {q.reason}")
    print(f"{args.file}: {len(cat.tools)} valid, {len(cat.quarantine)} invalid tool(s)")
    if args.quarantine:
        write_quarantine(args.quarantine, cat.quarantine)
    return 1 if cat.quarantine else 0


def _cmd_tools_import(args: argparse.Namespace) -> int:
    from ttpa_ray.tools.catalog import load_bfcl, load_builtin, load_file, write_catalog

    source = args.source
    if source == "builtin":
        cat = load_builtin()
    elif source == "bfcl":
        cats = args.categories.split(",") if args.categories else None
        cat = load_bfcl(cats)
    else:
        cat = load_file(source)
    counts = write_catalog(cat, args.out, config={"from": source, "categories": args.categories})
    print(
        f"imported {counts.rows_out} tool(s) from {source} into {args.out} "
        f"({counts.rows_quarantined} quarantined, {cat.merged} identical repeats merged, "
        f"{cat.variants} name variants kept with their BFCL entries)"
    )
    for q in cat.quarantine[:20]:
        print(f"  quarantined {q.row_id}: {q.reason}")
    if len(cat.quarantine) > 20:
        print(f"  ... {len(cat.quarantine) - 20} more in {Path(args.out) / 'quarantine.parquet'}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ttpa_ray.score.stage import run_score

    counts = run_score(
        args.inp,
        args.out,
        quarantine_path=args.quarantine,
        workers=args.workers,
        num_cpus=args.num_cpus,
        batch_size=args.batch_size,
        pred_col=args.pred_col,
        gold_col=args.gold_col,
        tools_col=args.tools_col,
        pred_format=args.pred_format,
    )
    print(json.dumps(counts.__dict__))
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import TinyModelConfig, catalog_texts, create_tiny_model_dir

    cfg = TinyModelConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        seed=args.seed,
        template=args.template,
    )
    texts = catalog_texts(load_builtin().openai(), template=args.template)
    out = create_tiny_model_dir(texts, args.out, cfg)
    print(f"tiny model + tokenizer written to {out}")
    return 0


def _cmd_construct(args: argparse.Namespace) -> int:
    from ttpa_ray.config import load_config
    from ttpa_ray.construct.stage import run_construct

    cfg = load_config(args.config).construct
    updates: dict[str, Any] = {}
    if args.catalog:
        updates["catalog"] = args.catalog
    if args.n:
        updates["n_episodes"] = args.n
    if args.workers:
        updates["workers"] = args.workers
    teacher = {
        k: v
        for k, v in (
            ("kind", args.teacher),
            ("model", args.teacher_model),
            ("base_url", args.base_url),
        )
        if v
    }
    if teacher:
        updates["teacher"] = {**cfg.teacher.model_dump(), **teacher}
    if updates:
        from pydantic import ValidationError

        from ttpa_ray.config import describe

        try:
            cfg = type(cfg).model_validate({**cfg.model_dump(), **updates})
        except ValidationError as e:
            raise UsageError(
                f"invalid construct settings:\n  {describe(e, 'construct.')}"
            ) from None
    manifest = run_construct(cfg, args.out)
    print(
        f"episodes: {manifest['splits']} quarantined: {manifest['quarantined']} "
        f"(shards run {manifest['shards_run']}, skipped {manifest['shards_skipped']}) → {args.out}"
    )
    print(f"dataset card: {Path(args.out) / 'card.md'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ttpa_ray.config import load_config
    from ttpa_ray.train.trainer import run_training

    cfg = load_config(args.config).train
    if args.workers:
        cfg = cfg.model_copy(update={"workers": args.workers})
    if args.max_steps:
        cfg = cfg.model_copy(update={"max_steps": args.max_steps})
    manifest = run_training(args.mode, cfg, args.data, args.model, args.out)
    final = manifest["final"]
    shown = {k: round(v, 4) for k, v in final.items() if isinstance(v, float)}
    print(f"{args.mode}: {manifest['steps']} steps; last {shown}")
    print(f"model: {manifest['model']}; metrics: {Path(args.out) / 'metrics.jsonl'}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ttpa_ray.config import describe, load_config
    from ttpa_ray.sample.stage import run_sample

    cfg = load_config(args.config).sample
    updates: dict[str, Any] = {"policy": args.policy}
    if args.policy.startswith(("http://", "https://")):
        updates["engine"] = "openai"
    for key in ("engine", "mode", "model", "n", "workers", "split", "max_episodes", "distractors"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    try:
        cfg = type(cfg).model_validate({**cfg.model_dump(), **updates})
    except ValidationError as e:
        raise UsageError(f"invalid sample settings:\n  {describe(e, 'sample.')}") from None
    m = run_sample(cfg, args.episodes, args.out)
    print(
        f"pairs: {m['pairs']} {m['pairs_by_source']} from {m['stages'][1]['rows_out']} turns; "
        f"quarantined turns: {m['stages'][0]['rows_quarantined'] + m['stages'][1]['rows_quarantined']} "
        f"(shards run {m['shards_run']}, skipped {m['shards_skipped']}) → {args.out}"
    )
    if "forward_tokens_per_pair" in m:
        print(f"forward tokens per pair: {m['forward_tokens_per_pair']}")
    return 0


def serve_config_from_args(args: argparse.Namespace) -> Any:
    """The `serve` section of `--config`, with the command line's overrides."""
    from pydantic import ValidationError

    from ttpa_ray.config import describe, load_config

    cfg = load_config(args.config).serve
    updates: dict[str, Any] = {}
    for key in ("model", "model_id", "host", "port", "backend", "max_ongoing_requests"):
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    if args.lora:
        adapters = dict(cfg.adapters)
        for item in args.lora:
            name, sep, path = item.partition("=")
            if not sep:
                # a bare directory: named after itself
                name, path = Path(item).name, item
            adapters[name] = path
        updates["adapters"] = adapters
    if args.no_batching:
        updates["batching"] = False
    try:
        return type(cfg).model_validate({**cfg.model_dump(), **updates})
    except ValidationError as e:
        raise UsageError(f"invalid serve settings:\n  {describe(e, 'serve.')}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    import yaml

    cfg = serve_config_from_args(args)
    if not cfg.model:
        raise UsageError("--model (or serve.model in --config) is required")
    if args.write_config:
        from ttpa_ray.serve.deploy import serve_config_file

        out = Path(args.write_config)
        out.write_text(yaml.safe_dump(serve_config_file(cfg), sort_keys=False))
        print(f"Serve config written to {out}: serve run {out}  (or: serve deploy {out})")
        return 0
    from ttpa_ray.serve.deploy import run_blocking

    run_blocking(cfg, api_key=args.api_key)
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from ttpa_ray.config import load_config
    from ttpa_ray.pipeline import run_pipeline

    cfg = load_config(args.config)
    _quiet_ray(args, args.run_dir)
    run_pipeline(cfg, args.run_dir, start=args.start, until=args.until)
    print(f"run dir: {args.run_dir} (pipeline.json, report/index.html)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ttpa_ray.eval import run_eval

    m = run_eval(
        args.endpoint,
        args.model,
        args.suite,
        Path(args.out),
        api_key=args.api_key,
        max_concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        limit=args.limit,
        distractors=args.distractors,
        seed=args.seed,
        max_turns=args.max_turns,
        max_retries=args.max_retries,
        progress=not args.no_progress,
    )

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(
        f"{m['suite']} {m['model']}: n={m['n']} esm={fmt(m['esm'])} exact={fmt(m['exact'])} "
        f"name_acc={fmt(m['name_acc'])} parse_rate={fmt(m['parse_rate'])} "
        f"ast={fmt(m['ast'])} request_errors={m['request_errors']} → {args.out}"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ttpa_ray.report import build_report, headline

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"no run dir at {run_dir}")
    path = build_report(run_dir)
    print(headline(run_dir))
    print(f"report: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ttpa_ray.construct.dataset import EXPORTERS
    from ttpa_ray.schema.io import read_rows

    src = Path(args.episodes)
    files = sorted(src.glob("*.parquet")) if src.is_dir() else [src]
    if not files:
        raise UsageError(f"no episode Parquet files in {src}")
    convert = EXPORTERS[args.format]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w") as f:
        for path in files:
            for row in read_rows(path):
                f.write(json.dumps(convert(row), ensure_ascii=False) + "\n")
                n += 1
    print(f"exported {n} episode(s) as {args.format} to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ttpa_ray.demo import run_demo

    _quiet_ray(args, args.out)
    run_demo(Path(args.out), args.config)
    return 0


def _quiet_ray(args: argparse.Namespace, run_dir: str) -> None:
    """Ray's own output to RUN_DIR/logs/ray.log, so the terminal shows stage lines, bars
    and the headline. `-v` keeps it on the terminal; a URI run dir has no local path yet."""
    from ttpa_ray.ray_utils import RAY_LOG, quiet_ray
    from ttpa_ray.storage import is_uri

    if args.verbose or is_uri(run_dir):
        return
    path = quiet_ray(Path(run_dir) / RAY_LOG, split_stderr=True)
    print(f"Ray's own output (logs, warnings, worker lines): {path}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttpa-ray", description=__doc__.splitlines()[0])
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging; demo/pipeline: Ray's own output on the terminal, not in "
        "RUN_DIR/logs/ray.log",
    )
    sub = p.add_subparsers(dest="command", required=True)

    tools = sub.add_parser("tools", help="tool catalogs: validate and import")
    tsub = tools.add_subparsers(dest="tools_command", required=True)
    v = tsub.add_parser("validate", help="validate a tools file; exit 1 if any tool is invalid")
    v.add_argument("file", help=".json (list or {'tools': [...]}), .jsonl or tools .parquet")
    v.add_argument("--quarantine", help="also write the invalid tools to this Parquet file")
    v.set_defaults(func=_cmd_tools_validate)
    imp = tsub.add_parser(
        "import", help="import a catalog into DIR (tools.parquet, quarantine, manifest)"
    )
    imp.add_argument("--from", dest="source", required=True, help="bfcl | builtin | a tools FILE")
    imp.add_argument("--out", required=True, help="output directory")
    imp.add_argument(
        "--categories", help="BFCL categories, comma-separated (default: all non-multi-turn)"
    )
    imp.set_defaults(func=_cmd_tools_import)

    s = sub.add_parser("score", help="ESM-score predicted vs gold calls on Ray Data")
    s.add_argument("--in", dest="inp", required=True, help="input Parquet (file or directory)")
    s.add_argument("--out", required=True, help="output Parquet directory")
    s.add_argument("--quarantine", help="quarantine Parquet (default <out>.quarantine.parquet)")
    s.add_argument("--workers", type=int, default=1, help="scorer actors")
    s.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per scorer actor")
    s.add_argument("--batch-size", type=int, default=4096)
    s.add_argument("--pred-col", default="pred")
    s.add_argument("--gold-col", default="gold")
    s.add_argument("--tools-col", default="tools")
    s.add_argument(
        "--pred-format",
        choices=("calls", "text"),
        default="calls",
        help="what the pred column holds: calls (a JSON call list, or call structs) or "
        "text (raw model output; only <tool_call> blocks are calls, as in eval)",
    )
    s.set_defaults(func=_cmd_score)

    t = sub.add_parser("tiny-model", help="build an untrained tiny model + BPE tokenizer dir")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=2048)
    t.add_argument("--hidden-size", type=int, default=128)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--template",
        choices=("hermes", "compact"),
        default="hermes",
        help="chat template: tools as JSON schemas (hermes) or one line each (compact)",
    )
    t.set_defaults(func=_cmd_tiny_model)

    c = sub.add_parser("construct", help="reversed dataset construction on Ray Data (resumable)")
    c.add_argument("--config", help="YAML config (default: built-in defaults)")
    c.add_argument("--catalog", help="builtin | bfcl | a tools FILE (overrides the config)")
    c.add_argument("--n", type=int, help="number of episodes (overrides the config)")
    c.add_argument("--workers", type=int, help="Ray Data workers per step (overrides the config)")
    c.add_argument(
        "--teacher", choices=["schema", "hf", "vllm", "openai"], help="teacher kind (overrides)"
    )
    c.add_argument("--teacher-model", help="teacher model dir (hf, vllm) or name (openai)")
    c.add_argument("--base-url", help="openai teacher: endpoint, e.g. http://127.0.0.1:8000/v1")
    c.add_argument("--out", required=True, help="output directory (re-running resumes)")
    c.set_defaults(func=_cmd_construct)

    tr = sub.add_parser("train", help="SFT or DPO-family training on Ray Train + DeepSpeed")
    tr.add_argument("mode", choices=["sft", "dpo"])
    tr.add_argument("--config", help="YAML config (its `train` section)")
    tr.add_argument(
        "--data", required=True, help="sft: construct dir or episodes Parquet; dpo: pairs"
    )
    tr.add_argument("--model", required=True, help="HF model directory to start from")
    tr.add_argument("--out", required=True, help="output dir: model/, metrics.jsonl, tensorboard/")
    tr.add_argument("--workers", type=int, help="Ray Train workers (overrides the config)")
    tr.add_argument("--max-steps", type=int, help="optimizer steps (overrides the config)")
    tr.set_defaults(func=_cmd_train)

    sm = sub.add_parser(
        "sample", help="TPS: candidates at every tool-call turn, ESM, pairs (resumable)"
    )
    sm.add_argument("--config", help="YAML config (its `sample` section)")
    sm.add_argument(
        "--policy", required=True, help="policy model dir (hf, vllm) or endpoint URL (openai)"
    )
    sm.add_argument(
        "--episodes",
        required=True,
        help="construct out dir (its episodes/<split>.parquet) or Parquet",
    )
    sm.add_argument("--mode", choices=["n_sample", "branch", "both"])
    sm.add_argument(
        "--engine", choices=["hf", "vllm", "openai"], help="default: hf, openai for a URL"
    )
    sm.add_argument("--model", help="openai: the served model's name")
    sm.add_argument("--n", type=int, help="n_sample: completions per turn")
    sm.add_argument("--workers", type=int, help="sampler actors")
    sm.add_argument("--split", help="episodes split (default train)")
    sm.add_argument("--max-episodes", type=int, help="sample the first N episodes only")
    sm.add_argument(
        "--distractors",
        type=int,
        help="offer the called tools + N others per prompt (default: the episode's tools)",
    )
    sm.add_argument("--out", required=True, help="output directory (re-running resumes)")
    sm.set_defaults(func=_cmd_sample)

    sv = sub.add_parser(
        "serve", help="OpenAI-compatible /v1/chat/completions with tools on Ray Serve"
    )
    sv.add_argument("--config", help="YAML config (its `serve` section)")
    sv.add_argument("--model", help="HF model directory (the base)")
    sv.add_argument("--model-id", help="model id clients send (default: the dir's name)")
    sv.add_argument(
        "--lora",
        action="append",
        help="LoRA adapter NAME=DIR (repeatable), served as <model-id>:NAME",
    )
    sv.add_argument("--host", help="bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default 8000)")
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    sv.add_argument("--backend", choices=["hf", "vllm"])
    sv.add_argument("--max-ongoing-requests", type=int, help="per replica; more get 503")
    sv.add_argument("--no-batching", action="store_true", help="turn @serve.batch off")
    sv.add_argument(
        "--write-config", metavar="FILE", help="write a Serve config for serve run/deploy and exit"
    )
    sv.set_defaults(func=_cmd_serve)

    pl = sub.add_parser(
        "pipeline",
        help="the whole TTPA run: construct → SFT → TPS → TTPA + baselines → eval → report",
    )
    pl.add_argument("--config", required=True, help="YAML config (every section)")
    pl.add_argument("--run-dir", required=True, help="run directory (re-running resumes)")
    pl.add_argument(
        "--from",
        dest="start",
        help="re-run from this stage on: construct, model, sft, sample, ttpa, dpo_response, "
        "eval, report",
    )
    pl.add_argument("--until", help="stop after this stage")
    pl.set_defaults(func=_cmd_pipeline)

    ev = sub.add_parser("eval", help="evaluate an OpenAI-compatible endpoint on a suite")
    ev.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    ev.add_argument("--model", required=True, help="model name sent in requests and recorded")
    ev.add_argument(
        "--suite",
        required=True,
        help="heldout:<construct_dir> | bfcl:<cat1,cat2,...|all> | toolbench:<file>",
    )
    ev.add_argument("--out", required=True, help="output dir (results.parquet, metrics.json)")
    ev.add_argument("--api-key", default=None)
    ev.add_argument("--concurrency", type=int, default=8)
    ev.add_argument("--max-tokens", type=int, default=512)
    ev.add_argument("--temperature", type=float, default=0.0)
    ev.add_argument(
        "--limit",
        type=int,
        default=None,
        help="examples (per BFCL category); held-out: turns sampled, stratified",
    )
    ev.add_argument("--distractors", type=int, default=None, help="held-out: extra tools offered")
    ev.add_argument("--seed", type=int, default=0, help="held-out sample and bootstrap intervals")
    ev.add_argument(
        "--max-turns", type=int, default=None, help="held-out: tool-call turns per episode"
    )
    ev.add_argument("--max-retries", type=int, default=3)
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_cmd_eval)

    rp = sub.add_parser(
        "report", help="write RUN_DIR/report/index.html and print the headline table"
    )
    rp.add_argument("run_dir", help="a pipeline run dir (any stages may be missing)")
    rp.set_defaults(func=_cmd_report)

    e = sub.add_parser("export", help="export episodes as sharegpt or openai-jsonl")
    e.add_argument("--episodes", required=True, help="an episodes .parquet or a directory of them")
    e.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    e.add_argument("--out", required=True, help="output .jsonl file")
    e.set_defaults(func=_cmd_export)

    d = sub.add_parser("demo", help="foundation showcase + the whole pipeline on the CPU default")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--config", help="pipeline config (make demo: configs/tiny-cpu.yaml)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: Any = args.func(args)
    except (UsageError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"ttpa-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
