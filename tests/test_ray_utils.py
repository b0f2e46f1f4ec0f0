"""Ray starts on loopback, whatever the import order."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
import ray  # imported before ttpa_ray on purpose: the harder order
from ttpa_ray.ray_utils import init_ray
init_ray(num_cpus=1)
print("NODES", sorted({n["NodeManagerAddress"] for n in ray.nodes()}))
ray.shutdown()
"""


@pytest.mark.timeout(180)
def test_local_ray_binds_loopback():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=170
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("NODES"))
    assert line == "NODES ['127.0.0.1']"
