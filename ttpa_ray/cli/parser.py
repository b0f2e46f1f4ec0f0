"""The `ttpa-ray` argument parser."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ttpa_ray.cli.args import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    field_default,
    field_help,
)
from ttpa_ray.cli.commands import (
    EXPORT_FORMATS,
    cmd_construct,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_pipeline,
    cmd_report,
    cmd_sample,
    cmd_score,
    cmd_serve,
    cmd_tiny_model,
    cmd_tools_import,
    cmd_tools_validate,
    cmd_train,
)


class Parser(argparse.ArgumentParser):
    """Bad arguments as one line (argparse prints the whole usage first); `ttpa-ray` and
    the cluster jobs alike."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _overwrite_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=what)


# `ttpa-ray serve` and `jobs.serve` read --lora alike (`serve.deploy.lora_adapters`)
LORA_HELP = field_help(
    "serve.adapters", "--lora NAME=DIR (or a DIR, named after itself) adds one; repeatable"
)
OVERWRITE_DIR = (
    "also write into a non-empty --out that ttpa-ray did not create (its files stay; files "
    "named like the outputs are replaced)"
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ttpa-ray",
        description="ttpa-ray: tool schemas in, a better tool-calling LLM out (TTPA on Ray).",
    )
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
    v.set_defaults(func=cmd_tools_validate)
    imp = tsub.add_parser(
        "import", help="import a catalog into DIR (tools.parquet, quarantine, manifest)"
    )
    imp.add_argument("--from", dest="source", required=True, help="bfcl | builtin | a tools FILE")
    imp.add_argument("--out", required=True, help="output directory")
    imp.add_argument(
        "--categories", help="BFCL categories, comma-separated (default: all non-multi-turn)"
    )
    _overwrite_flag(imp, OVERWRITE_DIR)
    imp.set_defaults(func=cmd_tools_import)

    s = sub.add_parser("score", help="ESM-score predicted vs gold calls on Ray Data")
    s.add_argument("--in", dest="inp", required=True, help="input Parquet (file or directory)")
    s.add_argument(
        "--out",
        required=True,
        help="output Parquet directory: new, empty, or an earlier score output (replaced)",
    )
    s.add_argument(
        "--quarantine",
        help="quarantine Parquet dir (default: --out Y.parquet → Y.quarantine.parquet)",
    )
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
    s.set_defaults(func=cmd_score)

    t = sub.add_parser("tiny-model", help="build an untrained tiny model + BPE tokenizer dir")
    t.add_argument("--out", required=True)
    # the pipeline's tiny shape: its defaults and descriptions, written once
    for flag, field, kind in (
        ("--vocab-size", "vocab_size", POSITIVE_INT),
        ("--hidden-size", "hidden_size", POSITIVE_INT),
        ("--layers", "num_layers", POSITIVE_INT),
        ("--seed", "seed", int),
    ):
        path = f"pipeline.tiny.{field}"
        t.add_argument(flag, type=kind, default=field_default(path), help=field_help(path))
    t.add_argument(
        "--template",
        choices=("hermes", "compact"),
        default=field_default("pipeline.tiny.template"),
        help=field_help("pipeline.tiny.template"),
    )
    _overwrite_flag(t, OVERWRITE_DIR)
    t.set_defaults(func=cmd_tiny_model)

    c = sub.add_parser("construct", help="reversed dataset construction on Ray Data (resumable)")
    c.add_argument("--config", help="YAML config (default: built-in defaults)")
    c.add_argument("--catalog", help=field_help("construct.catalog"))
    c.add_argument("--n", type=int, help=field_help("construct.n_episodes"))
    c.add_argument("--workers", type=int, help=field_help("construct.workers"))
    c.add_argument(
        "--teacher",
        choices=["schema", "hf", "vllm", "openai"],
        help=field_help("construct.teacher.kind"),
    )
    c.add_argument("--teacher-model", help=field_help("construct.teacher.model"))
    c.add_argument("--base-url", help=field_help("construct.teacher.base_url"))
    c.add_argument("--out", required=True, help="output directory (re-running resumes)")
    _overwrite_flag(c, OVERWRITE_DIR)
    c.set_defaults(func=cmd_construct)

    tr = sub.add_parser("train", help="SFT, DPO-family or GRPO training on Ray Train + DeepSpeed")
    tr.add_argument("mode", choices=["sft", "dpo", "grpo"])
    tr.add_argument("--config", help="YAML config (its `train` section)")
    tr.add_argument(
        "--data",
        required=True,
        help="sft: construct dir or episodes Parquet; dpo: pairs; grpo: construct dir, "
        "episodes or turns Parquet",
    )
    tr.add_argument(
        "--model", required=True, help="HF model directory to start from (grpo: the SFT model)"
    )
    tr.add_argument(
        "--out",
        required=True,
        help="output dir: model/, metrics.jsonl, ray/ (checkpoints; TensorBoard events in "
        "ray/tensorboard)",
    )
    tr.add_argument("--workers", type=int, help=field_help("train.workers"))
    tr.add_argument("--max-steps", type=int, help=field_help("train.max_steps"))
    _overwrite_flag(tr, OVERWRITE_DIR)
    tr.set_defaults(func=cmd_train)

    sm = sub.add_parser(
        "sample", help="TPS: candidates at every tool-call turn, ESM, pairs (resumable)"
    )
    sm.add_argument("--config", help="YAML config (its `sample` section)")
    sm.add_argument("--policy", required=True, help=field_help("sample.policy"))
    sm.add_argument(
        "--episodes",
        required=True,
        help="construct out dir (its episodes/<split>.parquet) or Parquet",
    )
    sm.add_argument(
        "--mode", choices=["n_sample", "branch", "both"], help=field_help("sample.mode")
    )
    sm.add_argument(
        "--engine",
        choices=["hf", "vllm", "openai"],
        help=field_help("sample.engine", "openai when --policy is a URL"),
    )
    sm.add_argument("--model", help=field_help("sample.model"))
    sm.add_argument("--n", type=int, help=field_help("sample.n"))
    sm.add_argument("--workers", type=int, help=field_help("sample.workers"))
    sm.add_argument("--split", help=field_help("sample.split"))
    sm.add_argument("--max-episodes", type=int, help=field_help("sample.max_episodes"))
    sm.add_argument("--distractors", type=int, help=field_help("sample.distractors"))
    sm.add_argument("--out", required=True, help="output directory (re-running resumes)")
    _overwrite_flag(sm, OVERWRITE_DIR)
    sm.set_defaults(func=cmd_sample)

    sv = sub.add_parser(
        "serve", help="OpenAI-compatible /v1/chat/completions with tools on Ray Serve"
    )
    sv.add_argument("--config", help="YAML config (its `serve` section)")
    sv.add_argument("--model", help=field_help("serve.model"))
    sv.add_argument("--model-id", help=field_help("serve.model_id"))
    sv.add_argument("--lora", action="append", help=LORA_HELP)
    sv.add_argument("--host", help=field_help("serve.host"))
    sv.add_argument("--port", type=int, help=field_help("serve.port"))
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
        help=field_help(
            "serve.api_key_env", "with --write-config: written down, read where the server runs"
        ),
    )
    key.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require the key in file PATH (stripped; keep it chmod 600)",
    )
    sv.add_argument("--backend", choices=["hf", "vllm"], help=field_help("serve.backend"))
    sv.add_argument(
        "--max-ongoing-requests", type=int, help=field_help("serve.max_ongoing_requests")
    )
    sv.add_argument(
        "--no-batching",
        action="store_true",
        help=field_help("serve.batching", "this flag turns it off"),
    )
    sv.add_argument(
        "--write-config", metavar="FILE", help="write a Serve config for serve run/deploy and exit"
    )
    _overwrite_flag(sv, "--write-config: replace an existing file ttpa-ray did not write")
    sv.set_defaults(func=cmd_serve)

    pl = sub.add_parser(
        "pipeline",
        help="the whole TTPA run: construct → SFT → TPS → TTPA + baselines (+ GRPO) → eval "
        "→ report",
    )
    pl.add_argument("--config", required=True, help="YAML config (every section)")
    pl.add_argument("--run-dir", required=True, help="run directory (re-running resumes)")
    pl.add_argument(
        "--from",
        dest="start",
        help="re-run from this stage on: construct, model, sft, sample, ttpa, dpo_response, "
        "grpo (with pipeline.grpo_enabled), eval, report",
    )
    pl.add_argument("--until", help="stop after this stage")
    _overwrite_flag(
        pl, "also run in a non-empty --run-dir that ttpa-ray did not create (nothing deleted)"
    )
    pl.set_defaults(func=cmd_pipeline)

    ev = sub.add_parser("eval", help="evaluate an OpenAI-compatible endpoint on a suite")
    ev.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    ev.add_argument("--model", required=True, help="model name sent in requests and recorded")
    ev.add_argument(
        "--suite",
        required=True,
        help="heldout:<construct_dir> | bfcl:<cat1,cat2,...|all> | toolbench:<file>",
    )
    ev.add_argument("--out", required=True, help="output dir (results.parquet, metrics.json)")
    ev_key = ev.add_mutually_exclusive_group()
    ev_key.add_argument(
        "--api-key",
        metavar="KEY",
        help="the endpoint's key (other users can read it in the process list: prefer "
        "--api-key-env or --api-key-file)",
    )
    ev_key.add_argument("--api-key-env", metavar="NAME", help="the key is in env var NAME")
    ev_key.add_argument("--api-key-file", metavar="PATH", help="the key is in file PATH")
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
    ev.set_defaults(func=cmd_eval)

    rp = sub.add_parser(
        "report", help="write RUN_DIR/report/index.html and print the headline table"
    )
    rp.add_argument("run_dir", help="a pipeline run dir (any stages may be missing)")
    rp.set_defaults(func=cmd_report)

    e = sub.add_parser("export", help="export episodes as sharegpt or openai-jsonl")
    e.add_argument("--episodes", required=True, help="an episodes .parquet or a directory of them")
    e.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    e.add_argument("--out", required=True, help="output .jsonl file")
    _overwrite_flag(e, "replace an existing --out file ttpa-ray did not write")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="foundation showcase + the whole pipeline on the CPU default")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--config", help="pipeline config (make demo: configs/tiny-cpu.yaml)")
    _overwrite_flag(d, OVERWRITE_DIR)
    d.set_defaults(func=cmd_demo)
    return p
