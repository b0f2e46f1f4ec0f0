"""`ttpa-ray` command line. Each subcommand is a thin shell over a stage's Python API.

Exit codes: 0 success, 1 the input had invalid items (e.g. `tools validate`), 2 the
command could not run (bad arguments, missing or unreadable input, an output path holding
data ttpa-ray did not write), reported as one `error:` line (`-v` adds the traceback).

Outputs: a directory ttpa-ray creates gets a `.ttpa-ray-out` marker, and only such a
directory is resumed, or replaced (`score`), without `--overwrite`; nothing ttpa-ray did
not write is ever deleted (see `ttpa_ray/outdir.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ttpa_ray.outdir import OutDirError, claim_out_dir, replacing_file

log = logging.getLogger("ttpa_ray")
EXPORT_FORMATS = ("openai-jsonl", "sharegpt")  # keys of construct.dataset.EXPORTERS
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # --api-key-env takes a name, never a key


class UsageError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# What a user can cause (bad flags, files, configs, outputs): one `error:` line, exit 2.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    UsageError,
    OutDirError,
    OSError,
    ValueError,
    KeyError,
    RecursionError,
    yaml.YAMLError,
)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _float_above(low: float, inclusive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value != value:
            raise argparse.ArgumentTypeError(
                f"must be {'at least' if inclusive else 'greater than'} {low}, got {text}"
            )
        return value

    return parse


POSITIVE_INT = _int_at_least(1)
NON_NEGATIVE_INT = _int_at_least(0)
POSITIVE_FLOAT = _float_above(0.0)
NON_NEGATIVE_FLOAT = _float_above(0.0, inclusive=True)


def _need(path: str, flag: str) -> None:
    """A local input must exist before any work starts (URIs are the stage's to check)."""
    if "://" not in str(path) and not Path(path).exists():
        raise FileNotFoundError(f"{flag}: not found: {path}")


def _load_config(args: argparse.Namespace) -> Any:
    from ttpa_ray.config import load_config

    try:
        return load_config(args.config)
    except (OSError, ValueError) as e:
        raise UsageError(f"--config: {_error_text(e)}") from None


def _override(cfg: Any, updates: dict[str, Any], section: str) -> Any:
    """`cfg` with the command line's `updates`, validated exactly as the YAML is."""
    from pydantic import ValidationError

    from ttpa_ray.config import describe

    if not updates:
        return cfg
    try:
        return type(cfg).model_validate({**cfg.model_dump(), **updates})
    except ValidationError as e:
        raise UsageError(f"invalid {section} settings:\n  {describe(e, section + '.')}") from None


def _cmd_tools_validate(args: argparse.Namespace) -> int:
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
        overwrite=args.overwrite,
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
    claim_out_dir(args.out, "tiny-model", overwrite=args.overwrite)
    texts = catalog_texts(load_builtin().openai(), template=args.template)
    out = create_tiny_model_dir(texts, args.out, cfg)
    print(f"tiny model + tokenizer written to {out}")
    return 0


def _cmd_construct(args: argparse.Namespace) -> int:
    from ttpa_ray.construct.stage import run_construct

    cfg = _load_config(args).construct
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
        updates["teacher"] = {**cfg.teacher.model_dump(), **teacher}
    cfg = _override(cfg, updates, "construct")
    if cfg.catalog not in ("builtin", "bfcl"):
        _need(cfg.catalog, "construct.catalog")
    claim_out_dir(args.out, "construct", overwrite=args.overwrite)
    manifest = run_construct(cfg, args.out)
    print(
        f"episodes: {manifest['splits']} quarantined: {manifest['quarantined']} "
        f"(shards run {manifest['shards_run']}, skipped {manifest['shards_skipped']}) → {args.out}"
    )
    print(f"dataset card: {Path(args.out) / 'card.md'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_config(args).train
    updates = {
        k: v for k, v in (("workers", args.workers), ("max_steps", args.max_steps)) if v is not None
    }
    cfg = _override(cfg, updates, "train")
    _need(args.data, "--data")
    _need(args.model, "--model")
    claim_out_dir(args.out, f"train {args.mode}", overwrite=args.overwrite)
    from ttpa_ray.train.trainer import run_training  # torch, DeepSpeed: after the checks

    manifest = run_training(args.mode, cfg, args.data, args.model, args.out)
    final = manifest["final"]
    shown = {k: round(v, 4) for k, v in final.items() if isinstance(v, float)}
    print(f"{args.mode}: {manifest['steps']} steps; last {shown}")
    print(f"model: {manifest['model']}; metrics: {Path(args.out) / 'metrics.jsonl'}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from ttpa_ray.sample.stage import run_sample

    cfg = _load_config(args).sample
    updates: dict[str, Any] = {"policy": args.policy}
    if args.policy.startswith(("http://", "https://")):
        updates["engine"] = "openai"
    for key in ("engine", "mode", "model", "n", "workers", "split", "max_episodes", "distractors"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    cfg = _override(cfg, updates, "sample")
    _need(args.episodes, "--episodes")
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


def serve_config_from_args(args: argparse.Namespace) -> Any:
    """The `serve` section of `--config`, with the command line's overrides."""
    cfg = _load_config(args).serve
    updates: dict[str, Any] = {}
    keys = ("model", "model_id", "host", "port", "backend", "max_ongoing_requests", "api_key_env")
    for key in keys:
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    if updates.get("api_key_env") is not None and not ENV_NAME.fullmatch(updates["api_key_env"]):
        raise UsageError(
            f"--api-key-env: {updates['api_key_env']!r} is not an environment variable name "
            "(pass the variable's name, never the key)"
        )
    if args.lora:
        adapters = dict(cfg.adapters)
        for item in args.lora:
            name, sep, path = item.partition("=")
            if not sep:
                # a bare directory: named after itself
                name, path = Path(item).name, item
            adapters[name] = path
        updates["adapters"] = adapters
    if getattr(args, "no_batching", False):
        updates["batching"] = False
    return _override(cfg, updates, "serve")


def _serve_api_key(args: argparse.Namespace, cfg: Any) -> str | None:
    """The key clients must send: from --api-key, --api-key-file, or the variable named by
    --api-key-env / serve.api_key_env; None without any (an open endpoint)."""
    if args.api_key is not None:
        if not args.api_key.strip():
            raise UsageError("--api-key: the key is empty")
        log.warning(
            "--api-key: the key is visible to other users of this machine (process list, "
            "shell history); prefer --api-key-env NAME or --api-key-file PATH"
        )
        return str(args.api_key)
    if args.api_key_file is not None:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise UsageError(f"--api-key-file: not found (or not a file): {path}")
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise UsageError(f"--api-key-file: {path} is empty")
        mode = path.stat().st_mode
        if mode & 0o044:
            log.warning(
                "--api-key-file: %s is readable by other users (mode %o); chmod 600 it",
                path,
                mode & 0o777,
            )
        return key
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            source = "--api-key-env" if args.api_key_env else "serve.api_key_env"
            raise UsageError(f"{source}: environment variable {cfg.api_key_env} is not set")
        return key
    return None


def _cmd_serve(args: argparse.Namespace) -> int:
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

    run_blocking(cfg, api_key=_serve_api_key(args, cfg))
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from ttpa_ray.pipeline import run_pipeline

    cfg = _load_config(args)
    # before _quiet_ray, which writes RUN_DIR/logs; URIs are not checked (no local dir)
    claim_out_dir(args.run_dir, "pipeline", overwrite=args.overwrite, legacy=("pipeline.json",))
    _quiet_ray(args, args.run_dir)
    run_pipeline(cfg, args.run_dir, start=args.start, until=args.until)
    print(f"run dir: {args.run_dir} (pipeline.json, report/index.html)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ttpa_ray.eval import run_eval

    claim_out_dir(args.out, "eval", overwrite=args.overwrite)
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
    _need(args.episodes, "--episodes")
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from ttpa_ray.demo import run_demo

    if args.config is not None:
        _load_config(args)  # a bad config fails now, not after the showcase
    claim_out_dir(args.out, "demo", overwrite=args.overwrite, legacy=("demo_summary.json",))
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


class _Parser(argparse.ArgumentParser):
    """Bad arguments as one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _overwrite_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=what)


OVERWRITE_DIR = (
    "also write into a non-empty --out that ttpa-ray did not create (its files stay; files "
    "named like the outputs are replaced)"
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ttpa-ray", description=__doc__.splitlines()[0])
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
    _overwrite_flag(v, "replace an existing --quarantine file ttpa-ray did not write")
    v.set_defaults(func=_cmd_tools_validate)
    imp = tsub.add_parser(
        "import", help="import a catalog into DIR (tools.parquet, quarantine, manifest)"
    )
    imp.add_argument("--from", dest="source", required=True, help="bfcl | builtin | a tools FILE")
    imp.add_argument("--out", required=True, help="output directory")
    imp.add_argument(
        "--categories", help="BFCL categories, comma-separated (default: all non-multi-turn)"
    )
    _overwrite_flag(imp, OVERWRITE_DIR)
    imp.set_defaults(func=_cmd_tools_import)

    s = sub.add_parser("score", help="ESM-score predicted vs gold calls on Ray Data")
    s.add_argument("--in", dest="inp", required=True, help="input Parquet (file or directory)")
    s.add_argument(
        "--out",
        required=True,
        help="output Parquet directory: new, empty, or an earlier score output (replaced)",
    )
    s.add_argument("--quarantine", help="quarantine Parquet dir (default <out>.quarantine.parquet)")
    s.add_argument("--workers", type=POSITIVE_INT, default=1, help="scorer actors")
    s.add_argument("--num-cpus", type=POSITIVE_FLOAT, default=1.0, help="CPUs per scorer actor")
    s.add_argument("--batch-size", type=POSITIVE_INT, default=4096)
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
    _overwrite_flag(
        s,
        "outputs that ttpa-ray did not write are moved aside to <name>.replaced-<time> "
        "(directories) or replaced (the manifest file), instead of an error",
    )
    s.set_defaults(func=_cmd_score)

    t = sub.add_parser("tiny-model", help="build an untrained tiny model + BPE tokenizer dir")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=POSITIVE_INT, default=2048)
    t.add_argument("--hidden-size", type=POSITIVE_INT, default=128)
    t.add_argument("--layers", type=POSITIVE_INT, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--template",
        choices=("hermes", "compact"),
        default="hermes",
        help="chat template: tools as JSON schemas (hermes) or one line each (compact)",
    )
    _overwrite_flag(t, OVERWRITE_DIR)
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
    _overwrite_flag(c, OVERWRITE_DIR)
    c.set_defaults(func=_cmd_construct)

    tr = sub.add_parser("train", help="SFT or DPO-family training on Ray Train + DeepSpeed")
    tr.add_argument("mode", choices=["sft", "dpo"])
    tr.add_argument("--config", help="YAML config (its `train` section)")
    tr.add_argument(
        "--data", required=True, help="sft: construct dir or episodes Parquet; dpo: pairs"
    )
    tr.add_argument("--model", required=True, help="HF model directory to start from")
    tr.add_argument(
        "--out",
        required=True,
        help="output dir: model/, metrics.jsonl, ray/ (checkpoints; TensorBoard events in "
        "ray/tensorboard)",
    )
    tr.add_argument("--workers", type=int, help="Ray Train workers (overrides the config)")
    tr.add_argument("--max-steps", type=int, help="optimizer steps (overrides the config)")
    _overwrite_flag(tr, OVERWRITE_DIR)
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
    _overwrite_flag(sm, OVERWRITE_DIR)
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
    key = sv.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (other users can read it in the process "
        "list: prefer --api-key-env or --api-key-file)",
    )
    key.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require the key held by environment variable NAME (with --write-config: "
        "written as serve.api_key_env, read where the server runs)",
    )
    key.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require the key in file PATH (stripped; keep it chmod 600)",
    )
    sv.add_argument("--backend", choices=["hf", "vllm"])
    sv.add_argument("--max-ongoing-requests", type=int, help="per replica; more get 503")
    sv.add_argument("--no-batching", action="store_true", help="turn @serve.batch off")
    sv.add_argument(
        "--write-config", metavar="FILE", help="write a Serve config for serve run/deploy and exit"
    )
    _overwrite_flag(sv, "--write-config: replace an existing file ttpa-ray did not write")
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
    _overwrite_flag(
        pl, "also run in a non-empty --run-dir that ttpa-ray did not create (nothing deleted)"
    )
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
    ev.add_argument("--concurrency", type=POSITIVE_INT, default=8)
    ev.add_argument("--max-tokens", type=POSITIVE_INT, default=512)
    ev.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=0.0)
    ev.add_argument(
        "--limit",
        type=POSITIVE_INT,
        default=None,
        help="examples (per BFCL category); held-out: turns sampled, stratified",
    )
    ev.add_argument(
        "--distractors", type=NON_NEGATIVE_INT, default=None, help="held-out: extra tools offered"
    )
    ev.add_argument("--seed", type=int, default=0, help="held-out sample and bootstrap intervals")
    ev.add_argument(
        "--max-turns", type=POSITIVE_INT, default=None, help="held-out: tool-call turns per episode"
    )
    ev.add_argument("--max-retries", type=NON_NEGATIVE_INT, default=3)
    ev.add_argument("--no-progress", action="store_true")
    _overwrite_flag(ev, OVERWRITE_DIR)
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
    _overwrite_flag(e, "replace an existing --out file ttpa-ray did not write")
    e.set_defaults(func=_cmd_export)

    d = sub.add_parser("demo", help="foundation showcase + the whole pipeline on the CPU default")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--config", help="pipeline config (make demo: configs/tiny-cpu.yaml)")
    _overwrite_flag(d, OVERWRITE_DIR)
    d.set_defaults(func=_cmd_demo)
    return p


def _one_line(text: str, limit: int = 1000) -> str:
    """Join a multi-line message: `a:` + `b` → `a: b`, other lines with `; `."""
    out = ""
    for line in (ln.strip() for ln in text.splitlines()):
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _error_text(e: BaseException) -> str:
    """A user error as one line that names the file or field."""
    from pydantic import ValidationError

    from ttpa_ray.config import describe

    cause = getattr(e, "cause", None)  # a Ray task error wraps the worker's exception
    if type(e).__module__.startswith("ray.") and isinstance(cause, BaseException):
        e = cause
    if isinstance(e, RecursionError):
        return "input nested too deeply (JSON or YAML beyond Python's recursion limit)"
    if isinstance(e, ValidationError):
        return _one_line(f"invalid settings: {describe(e)}")
    if isinstance(e, OSError) and e.filename is not None:
        for cls, what in (
            (FileNotFoundError, "not found"),
            (IsADirectoryError, "is a directory, expected a file"),
            (NotADirectoryError, "not a directory"),
            (PermissionError, "permission denied"),
        ):
            if isinstance(e, cls):
                return f"{what}: {e.filename}"
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, FileNotFoundError) and text and " " not in text:
        text = f"not found: {text}"  # a bare path, as pyarrow and Ray raise it
    return _one_line(text or type(e).__name__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    prog = " ".join(w for w in ("ttpa-ray", args.command, getattr(args, "tools_command", "")) if w)
    try:
        result: Any = args.func(args)
    except USER_ERRORS as e:
        log.debug("%s failed", prog, exc_info=True)  # -v: the traceback, for a bug report
        print(f"{prog}: error: {_error_text(e)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
