"""ESM batch scorer (pure, Arrow) and the Ray Data score stage (real local Ray)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ttpa_ray.schema.io import read_rows
from ttpa_ray.score.batch import QUARANTINE_COL, ESMBatchScorer
from ttpa_ray.score.esm import esm_score

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
TOOLS_JSON = json.dumps(TOOLS)
GOLD = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}])


def rows():
    preds = [
        GOLD,
        json.dumps([{"name": "get_weather", "arguments": {"city": "paris", "days": 2}}]),
        json.dumps([{"name": "get_weather", "arguments": '{"city": "Paris"'}]),  # bad JSON args
        None,  # no call
        json.dumps([{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]),
        GOLD,
    ]
    golds = [GOLD] * 4 + ['[{"name": "get_weather", "arguments": "{"}]', None]
    tools = [TOOLS_JSON] * 5 + [TOOLS_JSON]
    tools[4] = "not json at all"
    return [
        {"id": f"r{i}", "pred": p, "gold": g, "tools": t}
        for i, (p, g, t) in enumerate(zip(preds, golds, tools, strict=True))
    ]


def test_batch_scorer_adds_columns_and_flags_unscorable_rows():
    table = pa.Table.from_pylist(rows())
    out = ESMBatchScorer()(table)
    assert out.num_rows == table.num_rows
    assert out.column("id").to_pylist() == table.column("id").to_pylist()
    scores = out.column("esm_score").to_pylist()
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx((3 + 3 + 1 + 2 + 2 * 0.75) / 11)
    assert scores[2] == 0.0 and out.column("esm_reason")[2].as_py() == "arguments_not_json"
    assert scores[3] == 0.0 and out.column("esm_reason")[3].as_py() == "no_call"
    q = out.column(QUARANTINE_COL).to_pylist()
    assert q[:4] == [None] * 4
    assert q[4] == "tools_not_json"
    assert q[5] == "gold_missing"
    for r, s in zip(rows()[:2], scores[:2], strict=True):
        assert s == esm_score(r["pred"], r["gold"], TOOLS)


def test_batch_scorer_quarantines_invalid_gold():
    batch = pa.Table.from_pylist(
        [{"pred": GOLD, "gold": '[{"name": "get_weather", "arguments": "{"}]', "tools": TOOLS_JSON}]
    )
    out = ESMBatchScorer()(batch)
    assert out.column(QUARANTINE_COL)[0].as_py().startswith("gold_invalid")


def test_batch_scorer_missing_column_is_clear():
    with pytest.raises(KeyError, match="missing \\['gold'\\]"):
        ESMBatchScorer()(pa.table({"pred": [GOLD], "tools": [TOOLS_JSON]}))


def test_batch_scorer_empty_batch():
    empty = pa.Table.from_pylist(
        [], schema=pa.schema([(c, pa.string()) for c in ("pred", "gold", "tools")])
    )
    out = ESMBatchScorer()(empty)
    assert out.num_rows == 0 and "esm_score" in out.column_names


@pytest.mark.timeout(300)
def test_ray_score_stage_counts_and_quarantine(ray_local, tmp_path):
    from ttpa_ray.score.stage import run_score

    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows() * 50), src)
    counts = run_score(src, tmp_path / "scored.parquet", workers=2, num_cpus=0.5, batch_size=64)
    assert (counts.rows_in, counts.rows_out, counts.rows_quarantined) == (300, 200, 100)
    scored = read_rows(tmp_path / "scored.parquet")
    assert len(scored) == 200 and QUARANTINE_COL not in scored[0]
    by_id: dict[str, set[float]] = {}
    for r in scored:
        by_id.setdefault(r["id"], set()).add(r["esm_score"])
    assert by_id["r0"] == {1.0} and by_id["r3"] == {0.0}
    quarantine = read_rows(tmp_path / "scored.quarantine.parquet")
    assert sorted({q["reason"] for q in quarantine}) == ["gold_missing", "tools_not_json"]
    assert all(
        q["stage"] == "score" and json.loads(q["raw"])["id"] == q["row_id"] for q in quarantine
    )
    manifest = json.loads((tmp_path / "scored.manifest.json").read_text())
    assert manifest["stages"][0]["rows_in"] == 300
    # a re-run into the same place replaces the outputs instead of appending to them
    run_score(src, tmp_path / "scored.parquet", workers=1, num_cpus=0.5)
    assert len(read_rows(tmp_path / "scored.parquet")) == 200
    assert len(read_rows(tmp_path / "scored.quarantine.parquet")) == 100


@pytest.mark.timeout(300)
def test_ray_score_rejects_empty_input(ray_local, tmp_path):
    from ttpa_ray.score.stage import run_score

    src = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table(
            {
                "pred": pa.array([], pa.string()),
                "gold": pa.array([], pa.string()),
                "tools": pa.array([], pa.string()),
            }
        ),
        src,
    )
    with pytest.raises(ValueError, match="has no rows"):
        run_score(src, tmp_path / "out.parquet")


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_score_cli(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows()[:4]), src)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "score",
            "--in",
            str(src),
            "--out",
            str(tmp_path / "o.parquet"),
            "--num-cpus",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["rows_out"] == 4
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttpa_ray.cli",
            "score",
            "--in",
            str(tmp_path / "nope.parquet"),
            "--out",
            str(tmp_path / "x.parquet"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert missing.returncode == 2
