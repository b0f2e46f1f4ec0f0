"""Every module imports; the light ones stay light (no torch/DeepSpeed/vLLM pulled in)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import ttpa_ray


def all_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(ttpa_ray.__path__, prefix="ttpa_ray.")
        if not m.ispkg and not m.name.endswith(".__main__")  # running it is not importing
    )


def test_every_module_imports():
    mods = all_modules()
    assert {"ttpa_ray.score.esm", "ttpa_ray.train.tiny", "ttpa_ray.cli.parser"} <= set(mods)
    for name in mods:
        importlib.import_module(name)


def test_scoring_and_schema_do_not_import_heavy_libraries():
    code = (
        "import sys, ttpa_ray.score, ttpa_ray.schema, ttpa_ray.tools, ttpa_ray.train;"
        "print(sorted(m for m in ('torch', 'deepspeed', 'vllm', 'ray', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
