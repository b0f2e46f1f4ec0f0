"""Ray autoscaling on one machine: a `LocalHead` running Ray's fake multi-node provider.

With `RAY_FAKE_CLUSTER=1` and an autoscaling config whose provider is `fake_multinode`,
the head's autoscaler monitor "launches" a worker node by starting another raylet (plus
its agents) on this machine, connected to the head's GCS, and "terminates" it by killing
those processes. That is the real autoscaler (v1) logic — demand from pending
tasks/actors, `min_workers`/`max_workers`, `upscaling_speed`, idle timeout — with
processes standing in for machines.

The wheel lacks `fake_multi_node/example.yaml` (so `ray.cluster_utils.AutoscalingCluster`
fails); `autoscaling_config()` writes the equivalent config itself.

Process cleanup: the monitor starts the fake nodes as its own children (no new session,
no reaper), so they stay in the head's process group and `LocalHead.stop()` signals them
too; `stop()` then double-checks `/proc` for anything still naming the cluster's temp dir.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ttpa_ray.cluster.head import LocalHead, free_ports

# Node type name the fake provider gives the head (FAKE_HEAD_NODE_TYPE in Ray's source).
HEAD_NODE_TYPE = "ray.head.default"
# Label put on every fake worker node so node_counts() can tell node types apart.
NODE_TYPE_LABEL = "ttpa.io/node-type"
# Fake worker nodes otherwise size their object store at 30% of RAM each.
DEFAULT_WORKER_OBJECT_STORE = 128 * 1024 * 1024


@dataclass
class FakeAutoscalingCluster:
    """A loopback Ray head whose autoscaler adds and removes fake worker nodes.

    `worker_types`: `{name: {"resources": {...}, "min_workers": 0, "max_workers": n}}`
    (resources are integers, as the autoscaler schema requires; `CPU`, `GPU` and
    `object_store_memory` become the node's own, the rest custom resources).
    `gcs_port` None picks a free port: the provider's `gcs_address` points the fake
    nodes at it, so the head need not hold 6379.
    """

    head_resources: dict[str, int] = field(default_factory=lambda: {"CPU": 1})
    worker_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    idle_timeout_s: float = 15.0
    upscaling_speed: float = 1.0
    # AUTOSCALER_UPDATE_INTERVAL_S: seconds between autoscaler rounds (Ray's default 5).
    update_interval_s: int = 1
    gcs_port: int | None = None
    head: LocalHead | None = None
    config_path: Path | None = None

    # -- config ---------------------------------------------------------------------------

    def autoscaling_config(self, gcs_address: str) -> dict[str, Any]:
        """The autoscaler config (the missing example.yaml, filled in)."""
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
                # The fake provider defaults to <node ip>:6379; say where our GCS is.
                "gcs_address": gcs_address,
                # Every fake node has the IP 127.0.0.1: key nodes by node id instead.
                "use_node_id_as_ip": True,
                # No SSH/setup commands to run on processes standing in for machines.
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": node_types,
            "head_node_type": HEAD_NODE_TYPE,
            "auth": {},
            "upscaling_speed": self.upscaling_speed,
            # The schema takes a number: fractions of a minute work.
            "idle_timeout_minutes": self.idle_timeout_s / 60.0,
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
        """Start the head with the autoscaling config written into its temp dir."""
        resources = dict(self.head_resources)
        port = self.gcs_port if self.gcs_port is not None else free_ports(1)[0]
        self.head = _FakeHead(
            cluster=self,
            num_cpus=resources.pop("CPU", None),
            num_gpus=resources.pop("GPU", None),
            resources={k: float(v) for k, v in resources.items()},
            gcs_port=port,
            env={
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": str(self.update_interval_s),
                # The monitor's Prometheus port is fixed (44217) unless set: another
                # cluster on this machine may hold it.
                "AUTOSCALER_METRIC_PORT": str(free_ports(1)[0]),
            },
        )
        self.head.start(timeout_s=timeout_s)
        try:
            # The job server answers before the head node shows up in the state API.
            self.wait_for_nodes(1, timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the head's process group (fake nodes included), then kill any straggler
        whose command line names the cluster's temp dir."""
        if self.head is None:
            return
        temp_dir = self.head.temp_dir
        self.head.stop()
        if temp_dir is not None:
            for pid in processes_mentioning(str(temp_dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

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
        """GCS address for `ray.init(address=...)` (with `client_env()` set)."""
        return self._head().address

    @property
    def dashboard_url(self) -> str:
        """Job server address for `ray job submit --address ...`."""
        return self._head().dashboard_url

    @property
    def temp_dir(self) -> Path | None:
        return self.head.temp_dir if self.head is not None else None

    def client_env(self) -> dict[str, str]:
        """Env for drivers and `ray job submit` (token auth with this head's token)."""
        return self._head().client_env()

    # -- observing ------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes, from the dashboard's state API (no `ray.init` needed here)."""
        head = self._head()
        assert head.token_path is not None
        req = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=1",
            headers={"Authorization": f"Bearer {head.token_path.read_text().strip()}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
        rows = body["data"]["result"]["result"]
        return [r for r in rows if r.get("state") == "ALIVE"]

    def node_counts(self) -> dict[str, int]:
        """Alive nodes: `{"total": n, "ray.head.default": 1, "<worker type>": k, ...}`."""
        counts: dict[str, int] = {"total": 0}
        for node in self.nodes():
            labels = node.get("labels") or {}
            if node.get("is_head_node"):
                kind = HEAD_NODE_TYPE
            else:
                kind = labels.get(NODE_TYPE_LABEL, "unknown")
            counts[kind] = counts.get(kind, 0) + 1
            counts["total"] += 1
        return counts

    def wait_for_nodes(self, n: int, timeout_s: float = 60.0, poll_s: float = 0.5) -> float:
        """Wait until exactly `n` nodes are alive; return the seconds it took."""
        t0 = time.monotonic()
        last: dict[str, int] = {}
        while time.monotonic() - t0 < timeout_s:
            try:
                last = self.node_counts()
            except OSError:
                last = {}
            if last.get("total") == n:
                return time.monotonic() - t0
            time.sleep(poll_s)
        raise TimeoutError(f"{n} nodes not reached in {timeout_s:.0f}s (last: {last})")


@dataclass
class NodeCountPoller:
    """Background thread sampling `cluster.node_counts()`: `(t, counts)` in `samples`."""

    cluster: FakeAutoscalingCluster
    interval_s: float = 0.5
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> NodeCountPoller:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._t0, self.cluster.node_counts()))
            except OSError:
                pass  # dashboard busy or restarting: skip this sample
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def max_total(self) -> int:
        return max((c["total"] for _, c in self.samples), default=0)


@dataclass
class _FakeHead(LocalHead):
    """`LocalHead` that writes the autoscaling config into its temp dir just before
    `ray start` (LocalHead creates that dir inside `start()`, then builds the command)."""

    cluster: FakeAutoscalingCluster | None = None

    def command(self) -> list[str]:
        assert self.temp_dir is not None and self.cluster is not None
        path = self.temp_dir / "autoscaling.yaml"
        gcs_address = f"{self.host}:{self.gcs_port}"
        path.write_text(yaml.safe_dump(self.cluster.autoscaling_config(gcs_address)))
        self.autoscaling_config = str(path)
        self.cluster.config_path = path
        return super().command()


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue  # a zombie waits for its parent's wait(), it runs nothing
        if text.encode() in cmdline:
            pids.append(int(entry))
    return pids
