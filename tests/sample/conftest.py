"""Shared TPS fixtures: a tiny model directory and schema-teacher episodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttpa_ray.construct.schema_teacher import build_episode
from ttpa_ray.schema.io import write_rows
from ttpa_ray.schema.records import EPISODE_SCHEMA
from ttpa_ray.tools.catalog import load_builtin

TOOLS = load_builtin().tools


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="session")
def episode_rows() -> list[dict]:
    return [build_episode(s, TOOLS).to_row() for s in range(6)]


@pytest.fixture(scope="session")
def episodes_path(tmp_path_factory, episode_rows) -> Path:
    path = tmp_path_factory.mktemp("tps-eps") / "train.parquet"
    write_rows(path, episode_rows, EPISODE_SCHEMA)
    return path
