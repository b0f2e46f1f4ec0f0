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


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests (the CUDA paths: bf16 training, the HF engine on a GPU, vLLM)
    run where torch sees a CUDA device and are skipped, with the reason, elsewhere."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
