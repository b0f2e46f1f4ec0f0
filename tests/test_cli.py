"""The CLI never deletes what it did not write, and every user error is one `error:` line
with exit 2 (in-process `main`; only the score round trip starts Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ttpa_ray.cli import UsageError, main
from ttpa_ray.cli.commands import serve_api_key, serve_config_from_args
from ttpa_ray.cli.errors import error_text
from ttpa_ray.outdir import MARKER
from ttpa_ray.schema.io import read_rows

ROOT = Path(__file__).resolve().parents[1]
TOOLS = json.dumps(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
)
GOLD = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start Ray fails the test: these errors must come before it."""

    def boom(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("ttpa_ray.ray_utils.init_ray", boom)


def score_input(path: Path, n: int = 4) -> Path:
    rows = [{"id": f"r{i}", "pred": GOLD, "gold": GOLD, "tools": TOOLS} for i in range(n)]
    rows[-1]["gold"] = None  # one row for the quarantine
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def user_dir(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "IMPORTANT.txt").write_text("keep me")
    (path / "sub" / "x").write_text("x")
    return path


def untouched(path: Path) -> bool:
    return (path / "IMPORTANT.txt").read_text() == "keep me" and (path / "sub" / "x").exists()


def error_line(capsys, command: str) -> str:
    """The one stderr line of a failed command."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"ttpa-ray {command}: error: "), err
    return err


def test_score_refuses_a_dir_it_did_not_write(tmp_path, capsys, no_ray):
    src = score_input(tmp_path / "in.parquet")
    out = user_dir(tmp_path / "out")
    assert main(["score", "--in", str(src), "--out", str(out)]) == 2
    err = error_line(capsys, "score")
    assert str(out) in err and "--overwrite" in err
    assert untouched(out) and sorted(p.name for p in out.iterdir()) == ["IMPORTANT.txt", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out"]


def test_score_refuses_a_foreign_manifest_file(tmp_path, capsys, no_ray):
    src = score_input(tmp_path / "in.parquet")
    (tmp_path / "o.manifest.json").write_text("my notes")
    assert main(["score", "--in", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "o.manifest.json" in error_line(capsys, "score")
    assert (tmp_path / "o.manifest.json").read_text() == "my notes"


def test_score_missing_columns_fail_before_ray(tmp_path, capsys, no_ray):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"pred": [GOLD], "answer": [GOLD]}), src)
    assert main(["score", "--in", str(src), "--out", str(tmp_path / "o")]) == 2
    err = error_line(capsys, "score")
    assert "gold, tools" in err and str(src) in err and "--gold-col" in err
    assert not (tmp_path / "o").exists()


def test_score_missing_input_is_named(tmp_path, capsys, no_ray):
    missing = tmp_path / "nope.parquet"
    assert main(["score", "--in", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = error_line(capsys, "score")
    assert "not found" in err and str(missing) in err


@pytest.mark.parametrize(
    "flag, value", [("--workers", "0"), ("--batch-size", "-1"), ("--num-cpus", "0")]
)
def test_score_bad_numbers_are_one_line(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["score", "--in", "a", "--out", str(tmp_path / "o"), flag, value])
    assert e.value.code == 2
    err = error_line(capsys, "score")
    assert flag in err and value in err


@pytest.mark.timeout(300)
def test_score_replaces_only_its_own_output(ray_local, tmp_path, capsys):
    src = score_input(tmp_path / "in.parquet")
    out = tmp_path / "scored"
    out.mkdir()  # an empty directory is fine to take
    (tmp_path / "notes.txt").write_text("beside the output")
    args = ["score", "--in", str(src), "--out", str(out), "--num-cpus", "0.5"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["rows_in"], first["rows_out"], first["rows_quarantined"]) == (4, 3, 1)
    assert (out / MARKER).is_file()
    files = set(out.glob("*.parquet"))
    assert main(args) == 0  # ours now: replaced, not appended to
    assert len(read_rows(out)) == 3 and len(read_rows(tmp_path / "scored.quarantine.parquet")) == 1
    assert files and not files & set(out.glob("*.parquet"))  # the first run's files are gone
    manifest = json.loads((tmp_path / "scored.manifest.json").read_text())
    assert manifest["stages"][0]["rows_in"] == 4
    assert (tmp_path / "notes.txt").read_text() == "beside the output"
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == [
        "in.parquet",
        "notes.txt",
        "scored",
        "scored.manifest.json",
        "scored.quarantine.parquet",
    ]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_construct_n_zero_is_validated(tmp_path, capsys, no_ray):
    assert main(["construct", "--n", "0", "--out", str(tmp_path / "c")]) == 2
    assert "construct.n_episodes" in error_line(capsys, "construct")
    assert not (tmp_path / "c").exists()


def test_train_workers_validated_before_any_loading(tmp_path, capsys, no_ray):
    # --data and --model do not exist: the settings error must come first
    args = ["train", "sft", "--data", str(tmp_path / "d"), "--model", str(tmp_path / "m")]
    assert main([*args, "--workers", "-1", "--out", str(tmp_path / "t")]) == 2
    assert "train.workers" in error_line(capsys, "train")
    assert main([*args, "--max-steps", "0", "--out", str(tmp_path / "t")]) == 2
    assert "train.max_steps" in error_line(capsys, "train")
    assert not (tmp_path / "t").exists()
    assert main([*args, "--out", str(tmp_path / "t")]) == 2
    err = error_line(capsys, "train")
    assert "--data: not found" in err and str(tmp_path / "d") in err


def test_config_that_is_a_directory(tmp_path, capsys):
    assert main(["construct", "--config", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    err = error_line(capsys, "construct")
    assert f"--config: {tmp_path} is a directory, expected a YAML file" in err


def test_config_with_bad_yaml_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("construct:\n  n_episodes: [1, 2\n")
    assert main(["construct", "--config", str(bad), "--out", str(tmp_path / "c")]) == 2
    err = error_line(capsys, "construct")
    assert str(bad) in err and "not valid YAML (line" in err


def test_tools_validate_deeply_nested_json(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["tools", "validate", str(deep)]) == 2
    err = error_line(capsys, "tools validate")
    assert str(deep) in err and "nested too deeply" in err


def test_tools_validate_quarantine_keeps_a_foreign_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "function", "function": {"name": "bad tool!", "parameters": {}}}]')
    q = tmp_path / "q.parquet"
    q.write_text("not mine to replace")
    assert main(["tools", "validate", str(bad), "--quarantine", str(q)]) == 2
    assert str(q) in error_line(capsys, "tools validate")
    assert q.read_text() == "not mine to replace"
    assert main(["tools", "validate", str(bad), "--quarantine", str(q), "--overwrite"]) == 1
    assert len(read_rows(q)) == 1


def test_export_missing_input_and_foreign_file(tmp_path, capsys):
    from ttpa_ray.schema.io import write_rows
    from ttpa_ray.schema.records import EPISODE_SCHEMA

    missing = tmp_path / "no-episodes"
    out = tmp_path / "out.jsonl"
    base = ["export", "--format", "openai-jsonl", "--out", str(out)]
    assert main([*base, "--episodes", str(missing)]) == 2
    err = error_line(capsys, "export")
    assert "not found" in err and str(missing) in err
    episodes = tmp_path / "ep.parquet"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    write_rows(episodes, [{"id": "e0", "tools": "[]", "messages": messages}], EPISODE_SCHEMA)
    out.write_text("my own data\n")
    assert main([*base, "--episodes", str(episodes)]) == 2
    err = error_line(capsys, "export")
    assert str(out) in err and "--overwrite" in err
    assert out.read_text() == "my own data\n"
    assert main([*base, "--episodes", str(episodes), "--overwrite"]) == 0
    assert json.loads(out.read_text())["messages"][1]["content"] == "hello"
    assert main([*base, "--episodes", str(episodes)]) == 0  # ours now: no flag needed


def _every_out(tmp_path: Path) -> dict[str, list[str]]:
    """Each command with a directory output, up to the point where it claims `--out`."""
    (tmp_path / "data.parquet").write_text("")
    (tmp_path / "model").mkdir()
    data, model = str(tmp_path / "data.parquet"), str(tmp_path / "model")
    return {
        "construct": ["construct"],
        "sample": ["sample", "--policy", model, "--episodes", data],
        "train": ["train", "sft", "--data", data, "--model", model],
        "tools": ["tools", "import", "--from", "builtin"],
        "eval": ["eval", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--suite", "x"],
        "tiny-model": ["tiny-model"],
        "demo": ["demo"],
        "pipeline": ["pipeline", "--config", str(ROOT / "configs" / "tiny-cpu.yaml")],
    }


@pytest.mark.parametrize(
    "command",
    ["construct", "sample", "train", "tools", "eval", "tiny-model", "demo", "pipeline"],
)
def test_every_out_dir_is_guarded(tmp_path, capsys, no_ray, command):
    argv = _every_out(tmp_path)[command]
    out = user_dir(tmp_path / "out")
    flag = "--run-dir" if command == "pipeline" else "--out"
    assert main([*argv, flag, str(out)]) == 2
    err = error_line(capsys, " ".join(argv[:2]) if command == "tools" else command)
    assert str(out) in err and "--overwrite" in err
    assert untouched(out) and sorted(p.name for p in out.iterdir()) == ["IMPORTANT.txt", "sub"]


def test_pipeline_run_dir_of_an_older_version_is_ours(tmp_path, capsys, no_ray):
    run = user_dir(tmp_path / "run")
    (run / "pipeline.json").write_text("{}")
    cfg = str(ROOT / "configs" / "tiny-cpu.yaml")
    # past the claim (which writes the marker), stopped by the fake Ray
    with pytest.raises(AssertionError, match="Ray was started"):
        main(["-v", "pipeline", "--config", cfg, "--run-dir", str(run)])
    assert (run / MARKER).is_file() and untouched(run)


def test_serve_key_is_never_written_into_a_config(tmp_path, capsys):
    out = tmp_path / "serve.yaml"
    assert main(["serve", "--model", "m", "--api-key", "K", "--write-config", str(out)]) == 2
    err = error_line(capsys, "serve")
    assert "cannot hold the key" in err and "--api-key-env NAME" in err
    key_file = tmp_path / "key"
    key_file.write_text("K\n")
    argv = ["serve", "--model", "m", "--api-key-file", str(key_file), "--write-config", str(out)]
    assert main(argv) == 2
    assert "cannot hold the key" in error_line(capsys, "serve")
    assert not out.exists()
    argv = ["serve", "--model", "m", "--api-key-env", "TTPA_KEY", "--write-config", str(out)]
    assert main(argv) == 0
    app = yaml.safe_load(out.read_text())["applications"][0]
    assert app["args"]["api_key_env"] == "TTPA_KEY"
    assert main(argv) == 0  # ours: rewritten without --overwrite


def test_serve_write_config_keeps_a_foreign_file(tmp_path, capsys):
    out = tmp_path / "serve.yaml"
    out.write_text("# hand-written\n")
    assert main(["serve", "--model", "m", "--write-config", str(out)]) == 2
    assert str(out) in error_line(capsys, "serve")
    assert out.read_text() == "# hand-written\n"


def test_serve_api_key_sources(tmp_path, monkeypatch, caplog):
    from ttpa_ray.cli import build_parser

    def key(*argv: str) -> str | None:
        args = build_parser().parse_args(["serve", "--model", "m", *argv])
        return serve_api_key(args, serve_config_from_args(args))

    assert key() is None
    monkeypatch.delenv("TTPA_KEY", raising=False)
    with pytest.raises(UsageError, match="--api-key-env: environment variable TTPA_KEY is not set"):
        key("--api-key-env", "TTPA_KEY")
    monkeypatch.setenv("TTPA_KEY", " s3cret \n")
    assert key("--api-key-env", "TTPA_KEY") == "s3cret"
    with pytest.raises(UsageError, match="not an environment variable name"):
        key("--api-key-env", "sk-literal-key")
    f = tmp_path / "key"
    with pytest.raises(UsageError, match="--api-key-file: not found"):
        key("--api-key-file", str(f))
    f.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        key("--api-key-file", str(f))
    f.write_text("s3cret\n")
    f.chmod(0o600)
    with caplog.at_level("WARNING", logger="ttpa_ray"):
        assert key("--api-key-file", str(f)) == "s3cret"
        assert "readable by other users" not in caplog.text
        f.chmod(0o644)
        assert key("--api-key-file", str(f)) == "s3cret"
        assert "readable by other users" in caplog.text
        assert key("--api-key", "K") == "K"
        assert "process list" in caplog.text
    with pytest.raises(SystemExit):  # one source at a time
        build_parser().parse_args(["serve", "--api-key", "K", "--api-key-env", "TTPA_KEY"])


def test_error_text_names_the_file():
    assert error_text(FileNotFoundError(2, "No such file", "/x/y")) == "not found: /x/y"
    assert error_text(IsADirectoryError(21, "Is a dir", "/d")) == (
        "is a directory, expected a file: /d"
    )
    assert error_text(PermissionError(13, "Permission denied", "/p")) == "permission denied: /p"
    assert error_text(FileNotFoundError("/bare/path")) == "not found: /bare/path"
    assert error_text(KeyError("missing ['gold']")) == "missing ['gold']"
    assert "nested too deeply" in error_text(RecursionError("maximum recursion depth"))
    assert error_text(ValueError("a:\n  b\n  c")) == "a: b; c"


def test_verbose_logs_the_traceback(tmp_path, capsys, caplog):
    with caplog.at_level("DEBUG", logger="ttpa_ray"):
        assert main(["-v", "construct", "--config", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "Traceback" in caplog.text and "UsageError" in caplog.text


def test_eval_reads_its_key_from_env_or_file(tmp_path, monkeypatch, capsys):
    """`eval` takes the endpoint's key like `serve` does: from an env var or a file, and
    a missing source is one error line before any request."""
    import ttpa_ray.eval as eval_pkg

    seen: list[str | None] = []

    def fake_run_eval(endpoint, model, suite, out, api_key=None, **kw):
        seen.append(api_key)
        return {
            "suite": suite, "model": model, "n": 0, "esm": None, "exact": None,
            "name_acc": None, "parse_rate": None, "ast": None, "request_errors": 0,
        }  # fmt: skip

    monkeypatch.setattr(eval_pkg, "run_eval", fake_run_eval)
    base = ["eval", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--suite", "bfcl:x"]
    monkeypatch.setenv("EVAL_KEY", "from-env")
    assert main([*base, "--out", str(tmp_path / "a"), "--api-key-env", "EVAL_KEY"]) == 0
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    assert main([*base, "--out", str(tmp_path / "b"), "--api-key-file", str(key_file)]) == 0
    assert seen == ["from-env", "from-file"]
    monkeypatch.delenv("EVAL_KEY")
    assert main([*base, "--out", str(tmp_path / "c"), "--api-key-env", "EVAL_KEY"]) == 2
    assert "EVAL_KEY is not set" in error_line(capsys, "eval")
    assert len(seen) == 2  # nothing was evaluated


def test_config_flags_take_help_and_defaults_from_the_config_fields():
    """A flag that sets a config field shows that field's description, its YAML key and
    its default: each is written once, in `config.py`. Override flags keep a None default
    (the config's value applies); `tiny-model` takes the pipeline's tiny shape as is."""
    import argparse
    import re

    from ttpa_ray.cli import build_parser
    from ttpa_ray.cli.args import config_field
    from ttpa_ray.config import TinyShape

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags: dict[tuple[str, str], str] = {}
    for command, sub in commands.choices.items():
        for action in sub._actions:
            m = re.search(r"\(config: ([\w.]+)(?:, default (.+))?\)$", action.help or "")
            if not m:
                continue
            field = config_field(m[1])
            assert action.help.startswith(field.description or ""), (command, action.help)
            default = field.get_default(call_default_factory=True)
            assert m[2] == (None if default is None or default in ({}, []) else str(default))
            flags[(command, action.option_strings[0])] = m[1]
    assert {
        ("construct", "--n"): "construct.n_episodes",
        ("construct", "--teacher"): "construct.teacher.kind",
        ("train", "--max-steps"): "train.max_steps",
        ("sample", "--engine"): "sample.engine",
        ("sample", "--distractors"): "sample.distractors",
        ("serve", "--port"): "serve.port",
        ("serve", "--lora"): "serve.adapters",
        ("tiny-model", "--layers"): "pipeline.tiny.num_layers",
    }.items() <= flags.items()
    sample = parser.parse_args(["sample", "--policy", "p", "--episodes", "e", "--out", "o"])
    assert sample.n is None and sample.engine is None and sample.workers is None
    tiny = parser.parse_args(["tiny-model", "--out", "o"])
    shape = TinyShape()
    assert (tiny.vocab_size, tiny.hidden_size, tiny.layers, tiny.seed, tiny.template) == (
        shape.vocab_size,
        shape.hidden_size,
        shape.num_layers,
        shape.seed,
        shape.template,
    )


def test_a_bad_override_is_one_line_naming_its_path(tmp_path, capsys, no_ray):
    """Overrides go through `config.apply_overrides`: nested ones too (`--teacher`)."""
    out = str(tmp_path / "c")
    assert main(["construct", "--teacher", "hf", "--out", out]) == 2
    assert "construct.teacher: teacher kind 'hf' needs `model`" in error_line(capsys, "construct")
    assert main(["serve", "--model", "m", "--port", "70000"]) == 2
    assert "invalid serve settings: serve.port: " in error_line(capsys, "serve")
    assert not (tmp_path / "c").exists()
