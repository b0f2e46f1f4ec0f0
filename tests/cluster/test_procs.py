"""`ttpa_ray.cluster.procs` on real processes this test starts: a process group with a
child that left it by `setsid`, and an unrelated process that only names the marker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from ttpa_ray.cluster.procs import cluster_pids, cmdline, processes_mentioning, start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process tree")


def _wait_for(check, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.fixture
def tree() -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]]:
    """`sh` leading its own group, with `sleep 300` in the group and `sleep 301` in a
    session of its own (still sh's child); plus a process elsewhere naming the marker."""
    marker = f"procs-marker-{uuid.uuid4().hex}"
    group = subprocess.Popen(
        ["sh", "-c", "sleep 300 & setsid sleep 301 & wait", marker], start_new_session=True
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", marker], start_new_session=True
    )
    try:
        yield group, other, marker
    finally:
        for pid in cluster_pids(group.pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in (group, other):
            proc.kill()
            proc.wait(timeout=10)


def test_cluster_pids_follows_group_marker_and_descent(tree):
    group, other, marker = tree
    expected = {
        "sleep 300",
        "sleep 301",
        f"{sys.executable} -c import time; time.sleep(300) {marker}",
    }

    def found():
        pids = cluster_pids(group.pid, marker)
        names = {cmdline(p) for p in pids if p != group.pid}
        return pids if names == expected else None

    pids = _wait_for(found)
    assert group.pid in pids and other.pid in pids and os.getpid() not in pids
    assert len(pids) == 4
    # the sh and the python process name the marker; the sleeps do not
    assert sorted(processes_mentioning(marker)) == sorted([group.pid, other.pid])


def test_start_time_names_a_live_process_only(tree):
    _, other, _ = tree
    first = start_time(other.pid)
    assert first is not None and start_time(other.pid) == first
    assert start_time(os.getpid()) != first
    other.kill()
    # killed and not yet reaped: a zombie, which runs nothing
    _wait_for(lambda: start_time(other.pid) is None)
    assert cmdline(other.pid) == ""
    other.wait(timeout=10)
    assert start_time(other.pid) is None and cmdline(other.pid) == ""
