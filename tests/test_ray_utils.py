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


RACE = """
import sys
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
from ttpa_ray import ray_utils as ru

dispatcher.add_handler("ray_print_logs", print)  # what ray.init installs
ru.quiet_ray(sys.argv[1])
ru._route_worker_output()
forward = dict(dispatcher.handlers)["ray_print_logs"]
old = ru._route["handler"]
ru.quiet_ray(sys.argv[2])  # a later run's log: the old handler is closed
lookups = iter([old, ru._route["handler"]])


class Racy(dict):  # the lookup happened just before the switch
    def __getitem__(self, key):
        return next(lookups) if key == "handler" else super().__getitem__(key)


ru._route = Racy(ru._route)
forward({"pid": 7, "lines": ["LATE-LINE"]})
print("DONE")
"""


def test_worker_output_arriving_while_the_log_switches_goes_to_the_new_log(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    out = subprocess.run(
        [sys.executable, "-c", RACE, str(a), str(b)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "DONE" in out.stdout, out.stderr[-2000:]
    assert "(pid=7) LATE-LINE" in b.read_text()
    assert "AttributeError" not in out.stderr
