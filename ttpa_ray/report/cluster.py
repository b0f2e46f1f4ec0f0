"""The report's cluster section: nodes over time (`cluster/nodes.jsonl`) against the
stages of `pipeline.json`, and each stage's peak cluster size."""

from __future__ import annotations

from ttpa_ray.cluster.nodes import NODES_FILE, read_timeline, stage_peaks
from ttpa_ray.report import plots
from ttpa_ray.report.common import MissingInput, Run
from ttpa_ray.report.html import fmt, note, table


def sec_cluster(run: Run) -> str:
    if not run.exists(NODES_FILE):
        raise MissingInput(NODES_FILE)
    samples = read_timeline(run.path(NODES_FILE))
    if not samples:
        raise MissingInput(NODES_FILE, "no samples")
    t0 = samples[0]["t"]
    # stage bands from the samples themselves: consecutive samples tagged with a stage
    spans: list[tuple[str, float, float]] = []
    for r in samples:
        if not r.get("stage"):
            continue
        x = r["t"] - t0
        if spans and spans[-1][0] == r["stage"]:
            spans[-1] = (r["stage"], spans[-1][1], x)
        else:
            spans.append((r["stage"], x, x))
    peaks = stage_peaks(samples)
    lo, hi = min(r["nodes"] for r in samples), max(r["nodes"] for r in samples)
    rows = [
        (name, int(p["max_nodes"]), fmt(p["max_gpus"], 0), int(p["samples"]))
        for name, p in peaks.items()
    ]
    parts = [
        note(
            f"{len(samples)} samples over {samples[-1]['t'] - t0:.0f} s; alive nodes "
            f"between {lo} and {hi} (head included); last sample: {samples[-1]['nodes']} node(s)"
        ),
        plots.node_timeline(
            [r["t"] - t0 for r in samples],
            [r["nodes"] for r in samples],
            [r.get("gpus", 0) for r in samples],
            spans,
        ),
        table(["stage", "peak nodes", "peak GPUs", "samples"], rows),
    ]
    return "\n".join(str(p) for p in parts)
