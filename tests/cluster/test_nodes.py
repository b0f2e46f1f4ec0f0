"""The node timeline: samples from Ray's node table, stage tags, torn lines, the report."""

from __future__ import annotations

import json

from ttpa_ray.cluster.nodes import NodeTimeline, node_sample, read_timeline, stage_peaks
from ttpa_ray.report.build import render


def node(alive: bool, cpu: float, gpu: float = 0.0, head: bool = False) -> dict:
    res = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    if head:
        res["node:__internal_head__"] = 1.0
    return {"Alive": alive, "Resources": res}


def test_node_sample_counts_alive_nodes_only():
    s = node_sample([node(True, 2, head=True), node(True, 1, 1), node(False, 8, 8)])
    assert s == {"nodes": 2, "cpus": 3.0, "gpus": 1.0, "workers": 1}


def test_timeline_records_stages_and_scaling(tmp_path):
    cluster = [node(True, 2, head=True)]
    tl = NodeTimeline(
        tmp_path / "cluster" / "nodes.jsonl", interval_s=3600, nodes_fn=lambda: cluster
    )
    tl.start()
    tl.set_stage("sft")
    cluster.append(node(True, 1, 1))  # the autoscaler adds a GPU worker for training
    tl.sample()
    tl.set_stage("")
    cluster.pop()
    tl.stop()
    with (tmp_path / "cluster" / "nodes.jsonl").open("a") as f:
        f.write('{"t": 1, "nod')  # a kill mid-write
    samples = read_timeline(tmp_path / "cluster" / "nodes.jsonl")
    assert [s["nodes"] for s in samples] == [1, 1, 2, 2, 1]
    assert [s["stage"] for s in samples] == ["", "sft", "sft", "", ""]
    assert stage_peaks(samples) == {"sft": {"max_nodes": 2, "max_gpus": 1.0, "samples": 2}}


def test_a_failing_node_table_never_raises(tmp_path):
    def broken() -> list:
        raise ConnectionError("GCS restarting")

    tl = NodeTimeline(tmp_path / "n.jsonl", nodes_fn=broken)
    assert tl.sample() is None
    assert not (tmp_path / "n.jsonl").exists()


def test_report_plots_the_timeline(tmp_path):
    recs = [
        {"t": 100.0, "stage": "", "nodes": 1, "cpus": 1, "gpus": 0, "workers": 0},
        {"t": 101.0, "stage": "sample", "nodes": 1, "cpus": 1, "gpus": 0, "workers": 0},
        {"t": 110.0, "stage": "sample", "nodes": 3, "cpus": 3, "gpus": 0, "workers": 2},
        {"t": 130.0, "stage": "", "nodes": 1, "cpus": 1, "gpus": 0, "workers": 0},
    ]
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "nodes.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    html = render(tmp_path)
    section = html.split('<section id="cluster">')[1].split("</section>")[0]
    assert "4 samples over 30 s" in section and "between 1 and 3" in section
    assert "<img" in section and "<td>sample</td>" in section.replace(' class="num"', "")


def test_report_without_a_timeline_says_not_available(tmp_path):
    section = render(tmp_path).split('<section id="cluster">')[1].split("</section>")[0]
    assert "not available" in section and "cluster/nodes.jsonl" in section
