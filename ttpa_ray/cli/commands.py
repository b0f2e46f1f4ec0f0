"""The subcommands: each a thin shell over a stage's Python API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ttpa_ray.cli.args import load_config_arg, need_input, override
from ttpa_ray.cli.errors import UsageError
from ttpa_ray.outdir import claim_out_dir, replacing_file

log = logging.getLogger("ttpa_ray")
EXPORT_FORMATS = ("openai-jsonl", "sharegpt")  # keys of construct.dataset.EXPORTERS
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # --api-key-env takes a name, never a key


def cmd_tools_validate(args: argparse.Namespace) -> int:
    from ttpa_ray.outdir import check_file_writable
    from ttpa_ray.schema.io import write_quarantine
    from ttpa_ray.tools.catalog import load_file

    if args.quarantine:
        check_file_writable(args.quarantine, overwrite=args.overwrite)
    cat = load_file(args.file)
    for q in cat.quarantine:
        print(f"INVALID {q.row_id}: {q.reason}")
    print(f"{args.file}: {len(cat.tools)} valid, {len(cat.quarantine)} invalid tool(s)")
    if args.quarantine:
        with replacing_file(args.quarantine, "tools validate", overwrite=args.overwrite) as tmp:
            write_quarantine(tmp, cat.quarantine)
    return 1 if cat.quarantine else 0


def cmd_tools_import(args: argparse.Namespace) -> int:
    from ttpa_ray.tools.catalog import load_catalog, write_catalog

    source = args.source
    cat = load_catalog(source, args.categories.split(",") if args.categories else None)
    claim_out_dir(args.out, "tools import", overwrite=args.overwrite)
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


def cmd_score(args: argparse.Namespace) -> int:
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
        overwrite=args.overwrite,
    )
    print(json.dumps(counts.__dict__))
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from ttpa_ray.config import TinyShape
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    cfg = TinyShape(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        seed=args.seed,
        template=args.template,
    )
    claim_out_dir(args.out, "tiny-model", overwrite=args.overwrite)
    texts = catalog_texts(load_builtin().openai(), template=args.template)
    out = create_tiny_model_dir(texts, args.out, cfg)
    print(f"tiny model + tokenizer written to {out}")
    return 0


def cmd_construct(args: argparse.Namespace) -> int:
    from ttpa_ray.construct.stage import run_construct
    from ttpa_ray.tools.catalog import NAMED_SOURCES

    cfg = load_config_arg(args).construct
    updates: dict[str, Any] = {
        k: v
        for k, v in (("catalog", args.catalog), ("n_episodes", args.n), ("workers", args.workers))
        if v is not None
    }
    teacher = {
        k: v
        for k, v in (
            ("kind", args.teacher),
            ("model", args.teacher_model),
            ("base_url", args.base_url),
        )
        if v is not None
    }
    if teacher:
        updates["teacher"] = teacher  # merged into the configured teacher key by key
    cfg = override(cfg, updates, "construct")
    if cfg.catalog not in NAMED_SOURCES:
        need_input(cfg.catalog, "construct.catalog")
    claim_out_dir(args.out, "construct", overwrite=args.overwrite)
    manifest = run_construct(cfg, args.out)
    print(
        f"episodes: {manifest['splits']} quarantined: {manifest['quarantined']} "
        f"(shards run {manifest['shards_run']}, skipped {manifest['shards_skipped']}) → {args.out}"
    )
    print(f"dataset card: {Path(args.out) / 'card.md'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config_arg(args).train
    updates = {
        k: v for k, v in (("workers", args.workers), ("max_steps", args.max_steps)) if v is not None
    }
    cfg = override(cfg, updates, "train")
    need_input(args.data, "--data")
    need_input(args.model, "--model")
    claim_out_dir(args.out, f"train {args.mode}", overwrite=args.overwrite)
    from ttpa_ray.train.trainer import run_training  # torch, DeepSpeed: after the checks

    manifest = run_training(args.mode, cfg, args.data, args.model, args.out)
    final = manifest["final"]
    shown = {k: round(v, 4) for k, v in final.items() if isinstance(v, float)}
    print(f"{args.mode}: {manifest['steps']} steps; last {shown}")
    print(f"model: {manifest['model']}; metrics: {Path(args.out) / 'metrics.jsonl'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ttpa_ray.sample.stage import run_sample

    cfg = load_config_arg(args).sample
    updates: dict[str, Any] = {"policy": args.policy}
    if args.policy.startswith(("http://", "https://")):
        updates["engine"] = "openai"
    for key in ("engine", "mode", "model", "n", "workers", "split", "max_episodes", "distractors"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    cfg = override(cfg, updates, "sample")
    need_input(args.episodes, "--episodes")
    claim_out_dir(args.out, "sample", overwrite=args.overwrite)
    m = run_sample(cfg, args.episodes, args.out)
    print(
        f"pairs: {m['pairs']} {m['pairs_by_source']} from {m['stages'][1]['rows_out']} turns; "
        f"quarantined turns: {m['stages'][0]['rows_quarantined'] + m['stages'][1]['rows_quarantined']} "
        f"(shards run {m['shards_run']}, skipped {m['shards_skipped']}) → {args.out}"
    )
    if "forward_tokens_per_pair" in m:
        print(f"forward tokens per pair: {m['forward_tokens_per_pair']}")
    return 0


def check_env_name(name: str, source: str) -> None:
    """`name` must be an environment variable's name: a key passed there by mistake would
    end up in a config file or a log."""
    if not ENV_NAME.fullmatch(name):
        raise UsageError(
            f"{source}: {name!r} is not an environment variable name "
            "(pass the variable's name, never the key)"
        )


def serve_config_from_args(args: argparse.Namespace) -> Any:
    """The `serve` section of `--config`, with the command line's overrides."""
    from ttpa_ray.serve.deploy import serve_settings

    cfg = load_config_arg(args).serve
    keys = ("model", "model_id", "host", "port", "backend", "max_ongoing_requests", "api_key_env")
    updates: dict[str, Any] = {key: getattr(args, key, None) for key in keys}
    if updates["api_key_env"] is not None:
        check_env_name(updates["api_key_env"], "--api-key-env")
    if getattr(args, "no_batching", False):
        updates["batching"] = False
    try:
        return serve_settings(cfg, updates, lora=args.lora)
    except ValueError as e:
        raise UsageError(str(e)) from None


def read_api_key(
    key: str | None, key_file: str | None, env_name: str | None, env_source: str = "--api-key-env"
) -> str | None:
    """An API key from one of three sources, checked: `--api-key` (warns: argv is visible
    to every user), `--api-key-file` (warns when others can read it), or the environment
    variable `env_name` (`env_source` names where that name came from). None without any."""
    if key is not None:
        if not key.strip():
            raise UsageError("--api-key: the key is empty")
        log.warning(
            "--api-key: the key is visible to other users of this machine (process list, "
            "shell history); prefer --api-key-env NAME or --api-key-file PATH"
        )
        return key
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise UsageError(f"--api-key-file: not found (or not a file): {path}")
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise UsageError(f"--api-key-file: {path} is empty")
        mode = path.stat().st_mode
        if mode & 0o044:
            log.warning(
                "--api-key-file: %s is readable by other users (mode %o); chmod 600 it",
                path,
                mode & 0o777,
            )
        return text
    if env_name:
        check_env_name(env_name, env_source)
        value = os.environ.get(env_name, "").strip()
        if not value:
            raise UsageError(f"{env_source}: environment variable {env_name} is not set")
        return value
    return None


def serve_api_key(args: argparse.Namespace, cfg: Any) -> str | None:
    """The key clients must send: from --api-key, --api-key-file, or the variable named by
    --api-key-env / serve.api_key_env; None without any (an open endpoint)."""
    source = "--api-key-env" if args.api_key_env else "serve.api_key_env"
    return read_api_key(args.api_key, args.api_key_file, cfg.api_key_env, source)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = serve_config_from_args(args)
    if not cfg.model:
        raise UsageError("--model (or serve.model in --config) is required")
    if args.write_config:
        from ttpa_ray.serve.deploy import serve_config_file

        if args.api_key is not None or args.api_key_file is not None:
            flag = "--api-key" if args.api_key is not None else "--api-key-file"
            raise UsageError(
                f"{flag} with --write-config: a Serve config file cannot hold the key; "
                "pass --api-key-env NAME and set NAME where the server runs"
            )
        out = Path(args.write_config)
        with replacing_file(out, "serve", overwrite=args.overwrite) as tmp:
            tmp.write_text(yaml.safe_dump(serve_config_file(cfg), sort_keys=False))
        print(f"Serve config written to {out}: serve run {out}  (or: serve deploy {out})")
        if cfg.api_key_env:
            print(f"the server requires the API key in ${cfg.api_key_env}: set it where it runs")
        return 0
    from ttpa_ray.serve.deploy import run_blocking

    run_blocking(cfg, api_key=serve_api_key(args, cfg))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from ttpa_ray.pipeline import run_pipeline

    cfg = load_config_arg(args)
    # before quiet_ray_output, which writes RUN_DIR/logs; URIs are not checked (no local dir)
    claim_out_dir(args.run_dir, "pipeline", overwrite=args.overwrite, legacy=("pipeline.json",))
    quiet_ray_output(args, args.run_dir)
    run_pipeline(cfg, args.run_dir, start=args.start, until=args.until)
    print(f"run dir: {args.run_dir} (pipeline.json, report/index.html)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ttpa_ray.eval import run_eval

    claim_out_dir(args.out, "eval", overwrite=args.overwrite)
    m = run_eval(
        args.endpoint,
        args.model,
        args.suite,
        Path(args.out),
        api_key=read_api_key(args.api_key, args.api_key_file, args.api_key_env),
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


def cmd_report(args: argparse.Namespace) -> int:
    from ttpa_ray.report import build_report, headline

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"no run dir at {run_dir}")
    path = build_report(run_dir)
    print(headline(run_dir))
    print(f"report: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ttpa_ray.construct.dataset import EXPORTERS
    from ttpa_ray.schema.io import read_rows

    src = Path(args.episodes)
    need_input(args.episodes, "--episodes")
    files = sorted(src.glob("*.parquet")) if src.is_dir() else [src]
    if not files:
        raise UsageError(f"no episode Parquet files in {src}")
    convert = EXPORTERS[args.format]
    out = Path(args.out)
    n = 0
    with replacing_file(out, "export", overwrite=args.overwrite) as tmp, tmp.open("w") as f:
        for path in files:
            for row in read_rows(path):
                f.write(json.dumps(convert(row), ensure_ascii=False) + "\n")
                n += 1
    print(f"exported {n} episode(s) as {args.format} to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ttpa_ray.demo import run_demo

    if args.config is not None:
        load_config_arg(args)  # a bad config fails now, not after the showcase
    claim_out_dir(args.out, "demo", overwrite=args.overwrite, legacy=("demo_summary.json",))
    quiet_ray_output(args, args.out)
    run_demo(Path(args.out), args.config)
    return 0


def quiet_ray_output(args: argparse.Namespace, run_dir: str) -> None:
    """Ray's own output to RUN_DIR/logs/ray.log, so the terminal shows stage lines, bars
    and the headline. `-v` keeps it on the terminal; a URI run dir has no local path yet."""
    from ttpa_ray.ray_utils import RAY_LOG, quiet_ray
    from ttpa_ray.storage import is_uri

    if args.verbose or is_uri(run_dir):
        return
    path = quiet_ray(Path(run_dir) / RAY_LOG, split_stderr=True)
    print(f"Ray's own output (logs, warnings, worker lines): {path}", flush=True)
