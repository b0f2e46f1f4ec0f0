"""Ray autoscaling on one machine: a `LocalHead` running Ray's fake multi-node provider.

With `RAY_FAKE_CLUSTER=1` and an autoscaling config whose provider is `fake_multinode`,
the head's autoscaler monitor "launches" a worker node by starting another raylet (with
its log monitor and agents) on this machine, connected to the head's GCS, and
"terminates" it by killing those processes. The scaling decisions are the real
autoscaler's (v1): demand from pending tasks/actors, `min_workers`/`max_workers`,
`upscaling_speed`, the idle timeout; processes stand in for machines.

Ray's wheel lacks `fake_multi_node/example.yaml` (so `ray.cluster_utils.AutoscalingCluster`
fails), and the monitor reads the config's keys directly without filling in defaults:
`autoscaling_config()` writes the whole config itself.

Process cleanup: the monitor starts fake nodes as its own children (no new session, no
reaper), so they stay in the head's process group and `LocalHead.stop()` signals them
too, then SIGKILLs anything of the cluster's that is still alive.

Use (clients run as separate processes with `client_env()`: it carries the head's token)::

    with FakeAutoscalingCluster(
        worker_types={"cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2}}
    ) as cluster:
        env = {**os.environ, **cluster.client_env()}
        subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard_url,
                        "--", "python", "job.py"], env=env, check=True)
        # or a driver process doing `ray.init(address=cluster.address)` with that env
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ttpa_ray.cluster.head import LocalHead, free_ports
from ttpa_ray.ray_utils import LOOPBACK_ENV

# The node type the fake provider gives the head (FAKE_HEAD_NODE_TYPE in Ray's source).
HEAD_NODE_TYPE = "ray.head.default"
# Label the autoscaler puts on each fake worker node: node_counts() groups by it.
NODE_TYPE_LABEL = "ttpa.io/node-type"
# A fake worker node otherwise sizes its object store at 30% of RAM, like a real one.
DEFAULT_WORKER_OBJECT_STORE = 128 * 1024 * 1024


@dataclass
class FakeAutoscalingCluster:
    """A loopback Ray head whose autoscaler adds and removes fake worker nodes.

    `worker_types`: `{name: {"resources": {...}, "min_workers": 0, "max_workers": n}}`,
    optionally `"labels"`. Resources are integers (the autoscaler schema says so);
    `CPU`, `GPU` and `object_store_memory` size the node, the rest are custom resources.
    `gcs_port` None picks a free port: the provider's `gcs_address` tells the fake nodes
    where the GCS is, so the head need not hold 6379 (the provider's default).
    """

    head_resources: dict[str, int] = field(default_factory=lambda: {"CPU": 1})
    worker_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    idle_timeout_s: float = 15.0
    upscaling_speed: float = 1.0
    # AUTOSCALER_UPDATE_INTERVAL_S: seconds between autoscaler rounds (Ray's default 5;
    # an integer, Ray parses it with int()).
    update_interval_s: int = 1
    gcs_port: int | None = None
    head: LocalHead | None = None
    config_path: Path | None = None
    # "pid command line" of what outlived the head's process group (then SIGKILLed)
    stragglers: list[str] = field(default_factory=list)

    # -- config ---------------------------------------------------------------------------

    def autoscaling_config(self, gcs_address: str) -> dict[str, Any]:
        """The autoscaler config: Ray's missing example.yaml, filled in."""
        node_types: dict[str, Any] = {
            HEAD_NODE_TYPE: {
                "resources": dict(self.head_resources),
                "node_config": {},
                "max_workers": 0,
            }
        }
        for name, spec in self.worker_types.items():
            resources = dict(spec["resources"])
            resources.setdefault("object_store_memory", DEFAULT_WORKER_OBJECT_STORE)
            node_types[name] = {
                "resources": resources,
                "node_config": {},
                "min_workers": int(spec.get("min_workers", 0)),
                "max_workers": int(spec["max_workers"]),
                "labels": {NODE_TYPE_LABEL: name, **spec.get("labels", {})},
            }
        return {
            "cluster_name": "ttpa-fake",
            "max_workers": sum(int(s["max_workers"]) for s in self.worker_types.values()),
            "provider": {
                "type": "fake_multinode",
                # Without it the provider uses <this machine's node IP>:6379.
                "gcs_address": gcs_address,
                # All fake nodes share 127.0.0.1: the autoscaler keys them by node id.
                "use_node_id_as_ip": True,
                # No SSH or setup commands for processes standing in for machines.
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": node_types,
            "head_node_type": HEAD_NODE_TYPE,
            "auth": {},
            "upscaling_speed": self.upscaling_speed,
            # A number in the schema: fractions of a minute work.
            "idle_timeout_minutes": self.idle_timeout_s / 60.0,
            # The monitor indexes these directly (no defaults are merged in).
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> FakeAutoscalingCluster:
        """Start the head (config written into its temp dir); wait until it is a node."""
        resources = dict(self.head_resources)
        self.head = _FakeHead(
            cluster=self,
            num_cpus=resources.pop("CPU", None),
            num_gpus=resources.pop("GPU", None),
            resources={k: float(v) for k, v in resources.items()},
            gcs_port=self.gcs_port if self.gcs_port is not None else free_ports(1)[0],
            env={
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": str(self.update_interval_s),
                # The monitor's Prometheus port is fixed (44217) unless set, and another
                # cluster on this machine may hold it.
                "AUTOSCALER_METRIC_PORT": str(free_ports(1)[0]),
            },
        )
        self.head.start(timeout_s=timeout_s)
        try:
            # The job server answers before the head shows up in the state API.
            self.wait_for_nodes(1, timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def processes(self) -> list[int]:
        """Live pids of this cluster (fake nodes included): see `LocalHead.processes`."""
        return self.head.processes() if self.head is not None else []

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the head (fake nodes are in its process group) and every straggler."""
        if self.head is None:
            return
        self.head.stop(grace_s=grace_s)
        self.stragglers = list(self.head.stragglers)

    def __enter__(self) -> FakeAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------

    def _head(self) -> LocalHead:
        if self.head is None:
            raise RuntimeError("cluster not started")
        return self.head

    @property
    def address(self) -> str:
        """GCS address for `ray.init(address=...)` (run with `client_env()`)."""
        return self._head().address

    @property
    def dashboard_url(self) -> str:
        """Job server for `ray job submit --address ...` (run with `client_env()`)."""
        return self._head().dashboard_url

    @property
    def temp_dir(self) -> Path | None:
        return self.head.temp_dir if self.head is not None else None

    def client_env(self) -> dict[str, str]:
        """Env for drivers and `ray job submit`: token auth with this head's token, and
        loopback (a driver's own node address is then 127.0.0.1 too)."""
        return {**LOOPBACK_ENV, **self._head().client_env()}

    # -- observing ------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes from the dashboard's state API: no `ray.init` in this process."""
        head = self._head()
        assert head.token_path is not None
        req = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/nodes?limit=10000&detail=1",
            headers={"Authorization": f"Bearer {head.token_path.read_text().strip()}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
        return [n for n in body["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def node_counts(self) -> dict[str, int]:
        """Alive nodes: `{"total": n, "ray.head.default": 1, "<worker type>": k, ...}`."""
        counts: dict[str, int] = {"total": 0}
        for node in self.nodes():
            if node.get("is_head_node"):
                kind = HEAD_NODE_TYPE
            else:
                kind = (node.get("labels") or {}).get(NODE_TYPE_LABEL, "unknown")
            counts[kind] = counts.get(kind, 0) + 1
            counts["total"] += 1
        return counts

    def wait_for_nodes(self, n: int, timeout_s: float = 60.0, poll_s: float = 0.5) -> float:
        """Wait until exactly `n` nodes are alive; return how many seconds that took."""
        t0 = time.monotonic()
        last: dict[str, int] = {}
        while time.monotonic() - t0 < timeout_s:
            try:
                last = self.node_counts()
            except OSError:  # dashboard not answering yet / busy
                last = {}
            if last.get("total") == n:
                return time.monotonic() - t0
            time.sleep(poll_s)
        raise TimeoutError(f"not {n} nodes after {timeout_s:.0f}s (last seen: {last})")


@dataclass
class _FakeHead(LocalHead):
    """`LocalHead` writing the autoscaling config into its temp dir right before `ray
    start` (`LocalHead.start()` creates that dir, then builds the command)."""

    cluster: FakeAutoscalingCluster | None = None

    def command(self) -> list[str]:
        assert self.temp_dir is not None and self.cluster is not None
        path = self.temp_dir / "autoscaling.yaml"
        gcs_address = f"{self.host}:{self.gcs_port}"
        path.write_text(yaml.safe_dump(self.cluster.autoscaling_config(gcs_address)))
        self.autoscaling_config = str(path)
        self.cluster.config_path = path
        return super().command()


@dataclass
class NodeCountPoller:
    """Context manager: a thread sampling `cluster.node_counts()` into `samples` as
    `(seconds since start, counts)`."""

    cluster: FakeAutoscalingCluster
    interval_s: float = 0.5
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    t0: float = 0.0  # time.monotonic() at __enter__

    def __enter__(self) -> NodeCountPoller:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="node-count-poller", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # dashboard busy: skip this sample
                self.samples.append((time.monotonic() - self.t0, self.cluster.node_counts()))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def peak(self, key: str = "total") -> int:
        return max((c.get(key, 0) for _, c in self.samples), default=0)

    def first_time(self, pred: Any) -> float | None:
        """Seconds (since start) of the first sample whose counts satisfy `pred`."""
        return next((t for t, c in self.samples if pred(c)), None)
