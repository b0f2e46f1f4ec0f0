"""Serve configuration: the Serve config file, ray.serve.llm kwargs, CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ttpa_ray.cli import build_parser, main
from ttpa_ray.cli.commands import serve_config_from_args
from ttpa_ray.config import ServeConfig
from ttpa_ray.serve.llm_config import SERVE_LLM_MISSING, build_vllm_app, llm_config_kwargs


def test_write_config_is_a_valid_serve_deploy_file(tmp_path, serve_model_dir):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    code = main(
        [
            "serve",
            "--model",
            str(serve_model_dir),
            "--lora",
            f"a1={tmp_path}",
            "--port",
            "8123",
            "--write-config",
            str(out),
        ]
    )
    assert code == 0
    data = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(data)  # what `serve deploy` checks
    app = schema.applications[0]
    assert app.import_path == "ttpa_ray.serve.app:build_app"
    assert data["http_options"] == {"host": "127.0.0.1", "port": 8123}
    cfg = ServeConfig.model_validate(app.args)
    assert cfg.model == str(serve_model_dir) and cfg.adapters == {"a1": str(tmp_path)}


def test_cli_overrides_and_bad_values(tmp_path):
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "m",
            "--lora",
            str(tmp_path / "x"),
            "--no-batching",
            "--host",
            "0.0.0.0",
        ]
    )
    cfg = serve_config_from_args(args)
    assert cfg.adapters == {"x": str(tmp_path / "x")} and not cfg.batching and cfg.host == "0.0.0.0"
    assert (
        main(
            [
                "serve",
                "--model",
                "m",
                "--lora",
                "a:b=/x",
                "--write-config",
                str(tmp_path / "s.yaml"),
            ]
        )
        == 2
    )
    assert main(["serve"]) == 2  # no model


def test_llm_config_kwargs(tmp_path, no_vllm):
    root = "s3://bucket/run/adapters"
    cfg = ServeConfig(
        backend="vllm",
        model="/models/base",
        model_id="base",
        adapters={"dpo": f"{root}/dpo", "ttpa": f"{root}/ttpa/"},
        tensor_parallel_size=2,
        accelerator_type="H100",
        max_replicas=3,
    )
    kw = llm_config_kwargs(cfg)
    assert kw["model_loading_config"] == {"model_id": "base", "model_source": "/models/base"}
    eng = kw["engine_kwargs"]
    assert eng["tool_call_parser"] == "hermes" and eng["enable_auto_tool_choice"] is True
    assert eng["tensor_parallel_size"] == 2 and eng["enable_lora"] is True
    assert kw["lora_config"]["dynamic_lora_loading_path"] == root
    assert kw["deployment_config"]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3}
    assert kw["accelerator_type"] == "H100"
    # adapters not under one root by their names cannot be loaded by vLLM by id
    with pytest.raises(ValueError, match="one prefix by name"):
        llm_config_kwargs(cfg.model_copy(update={"adapters": {"other": f"{root}/dpo"}}))
    with pytest.raises(ValueError, match="one prefix by name"):
        two_roots = {"dpo": f"{root}/dpo", "ttpa": "gs://other/ttpa"}
        llm_config_kwargs(cfg.model_copy(update={"adapters": two_roots}))
    # Ray 2.60's LoraConfig asserts a remote prefix: a local adapter is refused up front
    local = {"dpo": str(tmp_path / "adapters" / "dpo")}
    with pytest.raises(ValueError, match=r"only from s3://, gs:// or Azure storage"):
        llm_config_kwargs(cfg.model_copy(update={"adapters": local}))
    with pytest.raises(ImportError, match=r"ttpa-ray\[gpu\]"):
        build_vllm_app(cfg)
    assert "vLLM" in SERVE_LLM_MISSING


def test_shipped_serve_configs_validate():
    from ttpa_ray.config import load_config

    for name in ("tiny-cpu.yaml", "serve-vllm.yaml"):
        cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name).serve
        assert cfg.host in ("127.0.0.1", "0.0.0.0")


def test_one_lora_parser_for_the_cli_and_jobs(tmp_path):
    """`--lora NAME=DIR` and a bare `--lora DIR` mean the same in `ttpa-ray serve` and
    `jobs.serve`: both go through `deploy.lora_adapters`."""
    from ttpa_ray.serve.deploy import lora_adapters

    got = lora_adapters(["a1=/x/one", "/y/two/", "z=/w"], {"old": "/o", "z": "/before"})
    assert got == {"old": "/o", "a1": "/x/one", "two": "/y/two/", "z": "/w"}


def test_one_resolution_of_the_served_model_for_the_cli_and_jobs():
    """`deploy.serve_settings` is what `ttpa-ray serve` and `jobs.serve` both call: given
    settings over the config's, else the run dir's model; validated as the YAML is."""
    from ttpa_ray.serve.deploy import serve_settings

    base = ServeConfig(model="/cfg/model", adapters={"old": "/o"})
    assert serve_settings(base, {"model": None, "port": None}) == base
    cfg = serve_settings(base, {"model": "/m", "port": 9000}, ["/a/new"], run_dir="/run")
    assert (cfg.model, cfg.port, cfg.adapters) == ("/m", 9000, {"old": "/o", "new": "/a/new"})
    assert serve_settings(base, run_dir="/run").model == "/cfg/model"  # the config's first
    assert serve_settings(ServeConfig(), run_dir="/run", which="sft").model == "/run/sft/model"
    assert serve_settings(ServeConfig()).model is None  # the caller says what is missing
    with pytest.raises(ValueError, match="adapter name 'a:b'"):
        serve_settings(base, lora=["a:b=/x"])


def test_llm_config_kwargs_on_cpu_ask_for_cpu_bundles():
    cfg = ServeConfig(
        backend="vllm", model="/models/base", vllm_device="cpu", vllm_cpus=0.5, cpu_kv_cache_gib=2
    )
    kw = llm_config_kwargs(cfg)
    assert kw["placement_group_config"] == {"bundle_per_worker": {"CPU": 0.5}}
    assert kw["accelerator_type"] is None
    assert kw["engine_kwargs"]["kv_cache_memory_bytes"] == 2 * 2**30
    assert kw["engine_kwargs"]["enforce_eager"] is True
    gpu = llm_config_kwargs(cfg.model_copy(update={"vllm_device": "cuda"}))
    assert (
        "placement_group_config" not in gpu and "kv_cache_memory_bytes" not in gpu["engine_kwargs"]
    )


@pytest.mark.vllm
def test_ray_serve_llm_reads_cpu_bundles_as_a_cpu_deployment_and_wants_remote_adapters():
    from ray.serve.llm import LLMConfig

    cfg = ServeConfig(backend="vllm", model="/models/base", vllm_device="cpu")
    llm = LLMConfig(**llm_config_kwargs(cfg))
    assert llm.accelerator_config.kind == "cpu"
    with_lora = ServeConfig(
        backend="vllm", model="/models/base", vllm_device="cpu", adapters={"a": "s3://b/x/a"}
    )
    assert LLMConfig(**llm_config_kwargs(with_lora)).lora_config.dynamic_lora_loading_path == (
        "s3://b/x"
    )
    # why lora_root refuses local adapters: Ray's own validation does
    kwargs = llm_config_kwargs(cfg)
    kwargs["lora_config"] = {"dynamic_lora_loading_path": "/local/adapters"}
    with pytest.raises(ValueError, match="Invalid lora_config"):
        LLMConfig(**kwargs)


def test_the_vllm_ingress_takes_the_configured_cpus():
    from ttpa_ray.serve.llm_config import ingress_options

    cfg = ServeConfig(backend="vllm", model="/m", num_cpus=0.25, resources={"pool": 1})
    assert ingress_options(cfg) == {
        "ray_actor_options": {"num_cpus": 0.25, "resources": {"pool": 1}}
    }
