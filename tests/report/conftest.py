"""Fixtures for the report tests: a full synthetic run dir and its report, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_rundir import make_run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run-full")


@pytest.fixture(scope="module")
def full_report(full_run: Path) -> Path:
    from ttpa_ray.report import build_report

    return build_report(full_run)
