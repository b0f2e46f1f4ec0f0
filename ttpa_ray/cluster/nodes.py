"""The cluster's size over time, as the pipeline's driver sees it.

`NodeTimeline` polls Ray's node table from a daemon thread and appends one JSON line per
sample to `RUN_DIR/cluster/nodes.jsonl`: alive nodes, their CPUs/GPUs, the stage running.
On an autoscaling cluster this is the record of workers being added for a stage and
removed after it; the report plots it. JSONL because a killed run keeps every sample.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NODES_FILE = "cluster/nodes.jsonl"


def node_sample(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """One sample from `ray.nodes()` records: counts over alive nodes only."""
    alive = [n for n in nodes if n.get("Alive")]
    res = [n.get("Resources") or {} for n in alive]
    return {
        "nodes": len(alive),
        "cpus": sum(float(r.get("CPU", 0)) for r in res),
        "gpus": sum(float(r.get("GPU", 0)) for r in res),
        # the head is the node with Ray's internal head marker
        "workers": sum(1 for r in res if "node:__internal_head__" not in r),
    }


class NodeTimeline:
    """Sample the cluster every `interval_s` into `path` until `stop()`."""

    def __init__(
        self,
        path: str | Path,
        interval_s: float = 2.0,
        nodes_fn: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.stage = ""
        self._nodes_fn = nodes_fn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0

    def _nodes(self) -> list[dict[str, Any]]:
        if self._nodes_fn is not None:
            return self._nodes_fn()
        import ray

        return list(ray.nodes())

    def sample(self) -> dict[str, Any] | None:
        """Take and append one sample now; None when Ray could not be asked."""
        try:
            rec = {"t": round(time.time(), 3), "stage": self.stage, **node_sample(self._nodes())}
        except Exception:  # noqa: BLE001 - a missed sample must never fail the pipeline
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self.samples += 1
        return rec

    def set_stage(self, stage: str) -> None:
        """Mark the stage now running; a sample is taken at every change."""
        self.stage = stage
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> NodeTimeline:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="ttpa-node-timeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self.stage = ""
        self.sample()


def read_timeline(path: str | Path) -> list[dict[str, Any]]:
    """The samples in `path`, in time order; a torn last line (a kill mid-write) is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "t" in rec and "nodes" in rec:
            out.append(rec)
    return sorted(out, key=lambda r: r["t"])


def stage_peaks(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage: the most nodes/GPUs seen while it ran, and its number of samples."""
    peaks: dict[str, dict[str, float]] = {}
    for r in samples:
        if not r.get("stage"):
            continue
        p = peaks.setdefault(r["stage"], {"max_nodes": 0, "max_gpus": 0, "samples": 0})
        p["max_nodes"] = max(p["max_nodes"], r["nodes"])
        p["max_gpus"] = max(p["max_gpus"], r.get("gpus", 0))
        p["samples"] += 1
    return peaks
