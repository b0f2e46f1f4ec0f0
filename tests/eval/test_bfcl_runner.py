"""BFCL's own runner (`bfcl generate` / `bfcl evaluate` from `make bfcl`'s `.venv-bfcl`) against
a ttpa-ray endpoint, entry by entry against `ttpa-ray eval --suite bfcl:simple_python`.

    make bfcl && .venv/bin/pytest tests/eval/test_bfcl_runner.py

BFCL reaches the endpoint through its `openbmb/MiniCPM-SALA-FC` entry, the one stock entry
whose handler is the plain OpenAI chat-completions one (`tools=`, `tool_calls` back) with its
client built from `OPENAI_BASE_URL` / `OPENAI_API_KEY`; the server answers to that model id.

The model is the tiny one, fine-tuned here (~15 s on 2 cores) to answer every prompt with the same call,
`solve_quadratic(a=2, b=5, c=3)`: right for simple_python_6, the right function with wrong
values for simple_python_5, a wrong function for simple_python_0..4. An untrained model would
fail every entry in both runners, and two all-false columns agree whatever the checkers do.

What passing proves, on these 7 entries:
- BFCL's unmodified runner drives the endpoint offline (any request leaving loopback goes to
  a dead proxy) and writes its result and score files under `BFCL_PROJECT_ROOT`.
- Both runners send the same messages, and the same tools but for the hint BFCL appends to
  every description ("Note that the provided function is in Python 3 syntax."), and get the
  same calls back.
- BFCL's verdicts equal ours, whether ours come from `run_eval` or from our AST checker on
  the calls BFCL recorded, with the same error kind for each failure; 1/7 in both.
It says nothing of categories other than simple_python, nor of BFCL's prompting (non-FC) mode.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BFCL_VENV = Path(os.environ.get("BFCL_VENV", ROOT / ".venv-bfcl"))
BFCL = BFCL_VENV / "bin" / "bfcl"
FC_MODEL = "openbmb/MiniCPM-SALA-FC"
N = 7
CALL = {"name": "solve_quadratic", "arguments": {"a": 2, "b": 5, "c": 3}}
EXPECTED = [False] * 6 + [True]  # simple_python_0..6; only 6 asks for CALL
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.bfcl,
    pytest.mark.skipif(not BFCL.exists(), reason=f"no {BFCL}: run `make bfcl` first"),
]


def bfcl_env(project_root: Path, url: str) -> dict[str, str]:
    """The environment of a `bfcl` command: our endpoint, a private project root, and
    proxies that make any request off loopback fail."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("OPENAI_", "PYTHON", "VIRTUAL_ENV"))
        and not k.upper().endswith("_PROXY")
    }
    env |= {
        "BFCL_PROJECT_ROOT": str(project_root),
        "OPENAI_BASE_URL": url,
        "OPENAI_API_KEY": "EMPTY",  # the client insists on one; our endpoint has none
    }
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = DEAD_PROXY
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def with_descriptions(
    tools: list[dict[str, Any]], edit: Callable[[str], str]
) -> list[dict[str, Any]]:
    """OpenAI `tools` with `edit(description)` as each function's description."""
    return [
        {**t, "function": {**t["function"], "description": edit(t["function"]["description"])}}
        for t in tools
    ]


def run_bfcl(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        [str(BFCL), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bfcl {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def one_file(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} under {root}, found {found}"
    return found[0]


def decoded_calls(result: Any) -> list[dict[str, Any]]:
    """BFCL's FC result `[{name: arguments_json}]` as flat calls; text (no tool call) is []."""
    if isinstance(result, str):
        return []
    return [{"name": n, "arguments": json.loads(a)} for item in result for n, a in item.items()]


def train_constant_model(out: Path, prompts: list[str]) -> Path:
    """The tiny model (64 wide, for speed), fine-tuned to answer every prompt with CALL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttpa_ray.config import TinyShape
    from ttpa_ray.schema.tool_call_text import render_tool_call
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import IM_END, catalog_texts, create_tiny_model_dir

    target = render_tool_call(CALL["name"], CALL["arguments"]) + IM_END
    texts = catalog_texts([t.to_openai() for t in load_builtin().tools], examples_per_tool=1)
    shape = TinyShape(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128)
    create_tiny_model_dir([*texts, *prompts, target], out, shape)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)

    tail = tok(target, add_special_tokens=False)["input_ids"]
    heads = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(h) for h in heads) + len(tail)
    ids = torch.full((len(heads), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)  # loss on the answer only
    for i, head in enumerate(heads):
        end = len(head) + len(tail)
        ids[i, :end] = torch.tensor(head + tail)
        mask[i, :end] = 1
        labels[i, len(head) : end] = torch.tensor(tail)

    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if loss.item() < 0.02:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02, f"the constant-answer model did not converge (loss {loss.item()})"
    model.eval().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Serve the constant model as FC_MODEL; run BFCL's runner and ours on the first N
    simple_python entries; yield what each recorded."""
    from ray import serve

    from ttpa_ray.cluster.head import free_ports
    from ttpa_ray.config import ServeConfig
    from ttpa_ray.eval import load_suite, run_eval
    from ttpa_ray.schema.io import read_rows
    from ttpa_ray.serve.deploy import start
    from ttpa_ray.tools.bfcl import bfcl_version
    from ttpa_ray.train.tiny import render_chat

    tmp = tmp_path_factory.mktemp("bfcl-runner")
    probe = "import importlib.metadata as m; print(m.version('bfcl-eval'))"
    python = BFCL_VENV / "bin" / "python"
    theirs = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    version = theirs.stdout.strip()
    assert version == bfcl_version(), f"{BFCL_VENV} has bfcl-eval {version}: run `make bfcl`"

    examples = load_suite("bfcl:simple_python", limit=N).examples
    # Prompts as both runners send them (BFCL's differ by the hint only, checked below):
    # odd entries in BFCL's form, even ones in ours, so training sees both at half the cost.
    prompts = []
    for i, e in enumerate(examples):
        tools = with_descriptions(e.tools, lambda d: d + PYTHON_HINT) if i % 2 else e.tools
        prompts.append(render_chat(e.messages, tools, add_generation_prompt=True))
    model_dir = train_constant_model(tmp / "model", prompts)

    cfg = ServeConfig(
        model=str(model_dir),
        model_id=FC_MODEL,
        port=free_ports(1)[0],
        num_cpus=0.5,
        default_max_tokens=64,  # BFCL sends no max_tokens
    )
    url = start(cfg)
    try:
        project = tmp / "bfcl"
        project.mkdir()
        ids = [e.id for e in examples]
        (project / "test_case_ids_to_generate.json").write_text(
            json.dumps({"simple_python": ids}), encoding="utf-8"
        )
        env = bfcl_env(project, url)
        generate = ["--model", FC_MODEL, "--run-ids", "--temperature", "0", "--include-input-log"]
        run_bfcl(["generate", *generate], env)
        evaluate = ["--model", FC_MODEL, "--test-category", "simple_python", "--partial-eval"]
        run_bfcl(["evaluate", *evaluate], env)
        metrics = run_eval(
            url, FC_MODEL, "bfcl:simple_python", tmp / "ours", limit=N, progress=False
        )
        # BFCL's layout: <root>/{result,score}/<model, "/" as "_">/non_live/BFCL_v4_<cat>_*.json
        files = f"{FC_MODEL.replace('/', '_')}/**/BFCL_v*_simple_python"
        yield {
            "project": project,
            "examples": examples,
            "results": read_jsonl(one_file(project / "result", f"{files}_result.json")),
            "scores": read_jsonl(one_file(project / "score", f"{files}_score.json")),
            "ours": read_rows(tmp / "ours" / "results.parquet"),
            "metrics": metrics,
        }
    finally:
        serve.shutdown()


def test_bfcl_writes_results_and_scores(runs):
    results, (header, *failures) = runs["results"], runs["scores"]
    assert [r["id"] for r in results] == [e.id for e in runs["examples"]]
    errors = [r for r in results if isinstance(r["result"], str)]
    assert not errors, f"BFCL got no tool call (or an inference error): {errors[:2]}"
    assert header["total_count"] == N
    assert header["correct_count"] == N - len(failures)
    assert (runs["project"] / "score" / "data_overall.csv").is_file()


def test_verdicts_agree_entry_by_entry(runs):
    from ttpa_ray.score.ast_checker import ast_check

    failed = {f["id"]: f["error_type"] for f in runs["scores"][1:]}
    bfcl = [e.id not in failed for e in runs["examples"]]
    ours = {r["id"]: r for r in runs["ours"]}
    e2e = [ours[e.id]["ast"] for e in runs["examples"]]
    # our checker on the very calls BFCL recorded
    recorded = {r["id"]: decoded_calls(r["result"]) for r in runs["results"]}
    on_theirs = [
        ast_check(recorded[e.id], e.possible_answer, e.tools, e.language)[0]
        for e in runs["examples"]
    ]
    assert bfcl == e2e == on_theirs == EXPECTED, f"BFCL {bfcl}, ours {e2e}, on BFCL's {on_theirs}"
    # the same kind of failure: ours is one part of BFCL's "checker:kind" or "kind:detail"
    for entry_id, bfcl_error in failed.items():
        assert ours[entry_id]["ast_error"] in bfcl_error.split(":"), (entry_id, bfcl_error)
    assert runs["metrics"]["ast"] == pytest.approx(runs["scores"][0]["accuracy"], abs=1e-6)


def test_same_requests_and_calls(runs):
    def unhint(description: str) -> str:
        return description.removesuffix(PYTHON_HINT)

    ours = {r["id"]: r for r in runs["ours"]}
    for entry, result in zip(runs["examples"], runs["results"], strict=True):
        sent = result["inference_log"][0]["content"]  # --include-input-log
        assert ast.literal_eval(sent["message"]) == entry.messages, entry.id  # BFCL logs repr()
        assert with_descriptions(sent["tools"], unhint) == with_descriptions(entry.tools, unhint)
        assert decoded_calls(result["result"]) == [CALL]
        assert json.loads(ours[entry.id]["pred_calls"]) == [CALL]
