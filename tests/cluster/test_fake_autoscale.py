"""ttpa_ray.cluster.fake: Ray's autoscaler adding and removing (fake) worker nodes on one
machine, driven by a `ray job submit` job and by a driver attached with `ray.init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import validate_config

from ttpa_ray.cluster.fake import HEAD_NODE_TYPE, FakeAutoscalingCluster, NodeCountPoller
from ttpa_ray.cluster.head import ray_bin
from ttpa_ray.cluster.procs import processes_mentioning, start_time

WORKER = "ttpa.worker"
IDLE_S = 10.0


def make_cluster() -> FakeAutoscalingCluster:
    return FakeAutoscalingCluster(
        head_resources={"CPU": 1},
        worker_types={
            WORKER: {"resources": {"CPU": 1, "ttpa_worker": 1}, "min_workers": 0, "max_workers": 2}
        },
        idle_timeout_s=IDLE_S,
    )


def test_autoscaling_config_is_valid() -> None:
    config = make_cluster().autoscaling_config("127.0.0.1:6379")
    # What the monitor reads back: the YAML file.
    config = yaml.safe_load(yaml.safe_dump(config))
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    # The monitor's own check (it only logs failures, at debug level: hence this test).
    validate_config(config)
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["gcs_address"] == "127.0.0.1:6379"
    assert config["provider"]["use_node_id_as_ip"] is True
    assert config["head_node_type"] == HEAD_NODE_TYPE
    head = config["available_node_types"][HEAD_NODE_TYPE]
    assert head["resources"] == {"CPU": 1} and head["max_workers"] == 0
    worker = config["available_node_types"][WORKER]
    assert worker["min_workers"] == 0 and worker["max_workers"] == 2
    assert worker["resources"]["ttpa_worker"] == 1
    assert config["idle_timeout_minutes"] == pytest.approx(IDLE_S / 60)


# Each workload holds one `ttpa_worker` (which only worker nodes have) in an actor for a
# few seconds, so both run at once and need two worker nodes.
HOLD_S = 8
ACTOR = f"""
import time, ray

@ray.remote(num_cpus=1, resources={{"ttpa_worker": 1}})
class Holder:
    def where(self):
        return ray.get_runtime_context().get_node_id()

h = Holder.remote()
node = ray.get(h.where.remote(), timeout=120)
assert node != ray.get_runtime_context().get_node_id(), "actor ran on the driver's node"
time.sleep({HOLD_S})
# CLOCK_MONOTONIC is system-wide on Linux: the test compares it with its own samples.
print("WORKLOAD_OK", node, time.monotonic(), flush=True)
"""
JOB = "import ray\nray.init()\n" + ACTOR  # `ray job submit` sets RAY_ADDRESS


def describe(pids: list[int]) -> str:
    """`ps` lines of `pids` (for failure messages)."""
    if not pids:
        return ""
    cmd = ["ps", "-o", "pid,ppid,pgid,stat,lstart,args", "-p", ",".join(map(str, pids))]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def raylet_pgids(temp_dir: str) -> dict[int, int]:
    """Raylets of the cluster (head and fake nodes) and their process groups."""
    out = {}
    for pid in processes_mentioning(temp_dir):
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if exe.endswith(b"/raylet"):
                out[pid] = os.getpgid(pid)
        except (OSError, ProcessLookupError):
            continue
    return out


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_scales_up_for_a_job_and_a_driver_then_down_when_idle() -> None:
    seen: dict[int, str | None] = {}  # the cluster's pids (with start times) while it ran
    raylet_groups: dict[int, int] = {}  # raylet pid -> its process group
    with make_cluster() as cluster:
        assert cluster.config_path is not None and cluster.temp_dir is not None
        assert cluster.config_path.parent == cluster.temp_dir
        temp_dir = str(cluster.temp_dir)
        assert cluster.node_counts() == {"total": 1, HEAD_NODE_TYPE: 1}

        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(cluster.client_env())
        driver_code = f"import ray\nray.init(address={cluster.address!r})\n" + ACTOR
        with NodeCountPoller(cluster) as poller:
            t_submit = time.monotonic() - poller.t0
            job = subprocess.Popen(
                [ray_bin(), "job", "submit", "--address", cluster.dashboard_url]
                + ["--", "python", "-c", JOB],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            driver = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(driver_code)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            deadline = time.monotonic() + 150
            while (job.poll() is None or driver.poll() is None) and time.monotonic() < deadline:
                seen.update((pid, start_time(pid)) for pid in cluster.processes())
                raylet_groups.update(raylet_pgids(temp_dir))
                time.sleep(1)
            for proc in (job, driver):
                if proc.poll() is None:
                    proc.kill()  # past the deadline: fail below with its output
            job_out, _ = job.communicate(timeout=30)
            driver_out, _ = driver.communicate(timeout=30)
            t_done = time.monotonic() - poller.t0
            assert job.returncode == 0 and "WORKLOAD_OK" in job_out, job_out[-4000:]
            assert driver.returncode == 0 and "WORKLOAD_OK" in driver_out, driver_out[-4000:]
            cluster.wait_for_nodes(1, timeout_s=IDLE_S + 60)
            # The poller samples every 0.5 s: let it record the 1-node state that
            # wait_for_nodes just saw before it stops (else the scale-down is unrecorded).
            deadline = time.monotonic() + 10
            while poller.samples[-1][1].get("total") != 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        samples = poller.samples
        timeline = [(round(t, 1), c["total"]) for t, c in samples]
        up_at = poller.first_time(lambda c: c["total"] > 1)
        last_busy = max(t for t, c in samples if c["total"] > 1)
        down_at = min(t for t, c in samples if t > last_busy)  # first sample at 1 node
        # When each workload let go of its worker (after its print), on the poller's clock.
        released = sorted(
            float(line.split()[-1]) - poller.t0
            for out in (job_out, driver_out)
            for line in out.splitlines()
            if line.startswith("WORKLOAD_OK")
        )
        assert up_at is not None and len(released) == 2, timeline
        print(
            f"first worker node {up_at - t_submit:.1f}s after submit, peak {poller.peak()} "
            f"nodes, workers released at {released[0]:.1f}s and {released[1]:.1f}s, clients "
            f"exited at {t_done:.1f}s, 1 node again at {down_at:.1f}s "
            f"({down_at - released[1]:.1f}s after the last release; idle timeout "
            f"{IDLE_S:.0f}s)\ntimeline {timeline}"
        )
        # Up: workers were added for the demand, no more than max_workers of them.
        assert poller.peak() >= 2, timeline
        assert poller.peak(WORKER) <= 2 and poller.peak(HEAD_NODE_TYPE) == 1, samples
        # Down: not before the idle timeout, and not long after it (update rounds are 1 s).
        assert IDLE_S - 1 <= down_at - released[1] <= IDLE_S + 20, timeline
        assert cluster.node_counts() == {"total": 1, HEAD_NODE_TYPE: 1}
        # Removed nodes are gone as processes too, not only marked dead: one raylet left.
        deadline = time.monotonic() + 15
        while len(raylet_pgids(temp_dir)) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(raylet_pgids(temp_dir)) == 1, raylet_pgids(temp_dir)
        # The fake nodes' raylets are in the head's process group: LocalHead.stop() gets them.
        assert cluster.head is not None and cluster.head.proc is not None
        assert len(raylet_groups) >= 2, raylet_groups
        assert set(raylet_groups.values()) == {cluster.head.proc.pid}, raylet_groups

    print("killed after the head's group stopped:", cluster.stragglers)
    # stop(): nothing of the cluster is left: no process seen while it ran (pids are
    # matched with their start times, pids get reused) and none naming its temp dir.
    assert len(seen) > 10
    alive = [pid for pid, start in seen.items() if start is not None and start_time(pid) == start]
    assert alive == [], describe(alive)
    assert processes_mentioning(temp_dir) == []
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if temp_dir in line], ps
