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


QUIET = """
import logging, os, sys, warnings
import ttpa_ray
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from ttpa_ray.ray_utils import quiet_ray
quiet_ray(sys.argv[1], split_stderr=True)
logging.getLogger("ray.data").warning("RAY-DATA-WARNING")
logging.getLogger("ray.serve").warning("SERVE-WARNING")
logging.getLogger("ray.train._internal.worker_group").warning("TRAIN-WARNING")
logging.getLogger("matplotlib.category").info("LIBRARY-INFO")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.tokenization_utils_base").warning("HF-WARNING")
warnings.warn("LIBRARY-DEPRECATION", FutureWarning)
os.write(2, b"CORE-STDERR\\n")  # what Ray's C++ core does
logging.getLogger("ttpa_ray").info("OUR-LOG-LINE")
warnings.warn_explicit("OUR-WARNING", UserWarning, ttpa_ray.__file__, 1)
print("[1/8] STAGE-LINE", flush=True)
sys.stderr.write("PROGRESS-BAR\\n")  # where tqdm writes
"""


@pytest.mark.timeout(120)
def test_quiet_ray_sends_library_output_to_the_log(tmp_path):
    log = tmp_path / "logs" / "ray.log"
    out = subprocess.run(
        [sys.executable, "-c", QUIET, str(log)], capture_output=True, text=True, timeout=110
    )
    assert out.returncode == 0, out.stderr[-2000:]
    screen, text = out.stdout + out.stderr, log.read_text()
    moved = ["RAY-DATA", "SERVE", "TRAIN", "LIBRARY-INFO", "HF-WARNING", "LIBRARY-DEPRECATION"]
    moved.append("CORE-STDERR")
    for word in moved:
        assert word in text and word not in screen, word
    for word in ("OUR-LOG-LINE", "OUR-WARNING", "STAGE-LINE", "PROGRESS-BAR"):
        assert word in screen, word


WORKER = """
import sys, time
import ray
from ttpa_ray.ray_utils import init_ray

@ray.remote
def chatty():
    print("WORKER-PRINT")
    return 1

init_ray(num_cpus=1, log_file=sys.argv[1])
assert ray.get(chatty.remote()) == 1
for _ in range(100):  # forwarded asynchronously by Ray's log monitor
    if "WORKER-PRINT" in open(sys.argv[1]).read():
        break
    time.sleep(0.2)
ray.shutdown()
print("DONE")
"""


@pytest.mark.timeout(180)
def test_worker_output_goes_to_the_log(tmp_path):
    log = tmp_path / "ray.log"
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(log)], capture_output=True, text=True, timeout=170
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DONE" in out.stdout
    assert "WORKER-PRINT" in log.read_text()
    assert "WORKER-PRINT" not in out.stdout + out.stderr
