"""The four construction steps as row functions, independent of Ray (DESIGN §3).

A row carries `id`, `seed` and, as steps run, the JSON of `scene`, `trajectory`, and the
text of `answer`, `query` (the query last: reversed construction). A step that fails
marks the row with `_quarantine_reason` / `_failed_step` and later steps pass it through,
so each stage keeps one output row per input row and the counts add up.
"""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any, Protocol

import pyarrow as pa

from ttpa_ray.schema.records import EPISODE_SCHEMA, Episode
from ttpa_ray.schema.tools import ToolSpec
from ttpa_ray.schema.validate import call_errors

STEPS = ("scene", "trajectory", "answer", "query")

ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("seed", pa.int64()),
        ("scene", pa.string()),
        ("trajectory", pa.string()),
        ("answer", pa.string()),
        ("query", pa.string()),
        ("_quarantine_reason", pa.string()),
        ("_failed_step", pa.string()),
        ("_seconds", pa.string()),  # JSON {step: seconds}, for the per-stage time split
    ]
)
OUT_SCHEMA = (
    EPISODE_SCHEMA.append(pa.field("_quarantine_reason", pa.string()))
    .append(pa.field("_failed_step", pa.string()))
    .append(pa.field("_raw", pa.string()))
    .append(pa.field("_seconds", pa.string()))
)


class Teacher(Protocol):
    """What writes an episode, step by step. Each method gets JSON-able dicts."""

    name: str

    def scene(self, seed: int) -> dict[str, Any]: ...
    def trajectory(self, scene: dict[str, Any], seed: int) -> dict[str, Any]: ...
    def answer(self, scene: dict[str, Any], trajectory: dict[str, Any], seed: int) -> str: ...
    def query(
        self, scene: dict[str, Any], trajectory: dict[str, Any], answer: str, seed: int
    ) -> str: ...
    def assemble(
        self,
        row_id: str,
        seed: int,
        scene: dict[str, Any],
        trajectory: dict[str, Any],
        answer: str,
        query: str,
    ) -> Episode: ...


class SchemaTeacher:
    """The deterministic, model-free teacher (`construct/schema_teacher.py`)."""

    name = "schema"

    def __init__(
        self,
        catalog: list[ToolSpec],
        window: int = 20,
        n_tools: tuple[int, int] = (7, 10),
        n_constraints: tuple[int, int] = (4, 7),
    ):
        self.catalog = catalog
        self.window, self.n_tools, self.n_constraints = window, tuple(n_tools), tuple(n_constraints)

    def scene(self, seed: int) -> dict[str, Any]:
        from ttpa_ray.construct.schema_teacher import step_scene

        return step_scene(
            seed,
            self.catalog,
            window=self.window,
            n_tools=self.n_tools,
            n_constraints=self.n_constraints,
        )

    def trajectory(self, scene: dict[str, Any], seed: int) -> dict[str, Any]:
        from ttpa_ray.construct.schema_teacher import step_trajectory

        return step_trajectory(scene, seed, self.catalog)

    def answer(self, scene: dict[str, Any], trajectory: dict[str, Any], seed: int) -> str:
        from ttpa_ray.construct.schema_teacher import step_answer

        return step_answer(scene, trajectory, seed)

    def query(
        self, scene: dict[str, Any], trajectory: dict[str, Any], answer: str, seed: int
    ) -> str:
        from ttpa_ray.construct.schema_teacher import step_query

        return step_query(scene, trajectory, answer, seed)

    def assemble(
        self,
        row_id: str,
        seed: int,
        scene: dict[str, Any],
        trajectory: dict[str, Any],
        answer: str,
        query: str,
    ) -> Episode:
        from ttpa_ray.construct.schema_teacher import assemble_episode

        return assemble_episode(row_id, seed, scene, trajectory, answer, query, self.catalog)


@cache
def _catalog(source: str) -> tuple[ToolSpec, ...]:
    from ttpa_ray.tools.catalog import load_bfcl, load_builtin, load_file

    cat = (
        load_builtin()
        if source == "builtin"
        else load_bfcl()
        if source == "bfcl"
        else load_file(source)
    )
    if not cat.tools:
        raise ValueError(f"catalog {source!r} has no valid tools")
    return tuple(cat.tools)


def make_teacher(config: dict[str, Any]) -> Teacher:
    """Build the teacher a `ConstructConfig` (as a dict) asks for, with its catalog."""
    kind = config["teacher"]["kind"]
    if kind != "schema":
        raise NotImplementedError(
            f"teacher {kind!r}: LLM teachers are not wired into construction yet; use 'schema'"
        )
    return SchemaTeacher(
        list(_catalog(config["catalog"])),
        config["window"],
        tuple(config["n_tools"]),
        tuple(config["n_constraints"]),
    )


def _fail(row: dict[str, Any], step: str, reason: str) -> None:
    row["_quarantine_reason"] = f"{step}: {reason}"
    row["_failed_step"] = step


def run_step(teacher: Teacher, step: str, row: dict[str, Any]) -> dict[str, Any]:
    """Run one step on one row in place. Errors become the row's quarantine reason:
    `Restart` (the teacher gave up, the paper's restart signal) and any teacher error."""
    if row.get("_quarantine_reason"):
        return row
    seconds = json.loads(row["_seconds"]) if row.get("_seconds") else {}
    t0 = time.perf_counter()
    try:
        seed = int(row["seed"])
        if step == "scene":
            row["scene"] = json.dumps(teacher.scene(seed))
        elif step == "trajectory":
            row["trajectory"] = json.dumps(teacher.trajectory(json.loads(row["scene"]), seed))
        elif step == "answer":
            row["answer"] = teacher.answer(
                json.loads(row["scene"]), json.loads(row["trajectory"]), seed
            )
        elif step == "query":
            row["query"] = teacher.query(
                json.loads(row["scene"]), json.loads(row["trajectory"]), row["answer"], seed
            )
        else:
            raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
    except Exception as e:  # noqa: BLE001 - a failed episode is quarantined, never fatal
        kind = "restart" if type(e).__name__ == "Restart" else f"teacher_error:{type(e).__name__}"
        _fail(row, step, f"{kind}: {e}")
    seconds[step] = time.perf_counter() - t0
    row["_seconds"] = json.dumps(seconds)
    return row


def finish_row(teacher: Teacher, row: dict[str, Any]) -> dict[str, Any]:
    """Assemble the Episode and check every call against its tool; → an OUT_SCHEMA row."""
    out: dict[str, Any] = {k: None for k in OUT_SCHEMA.names}
    out.update(id=row["id"], seed=row["seed"], _seconds=row.get("_seconds"))
    if not row.get("_quarantine_reason"):
        try:
            ep = teacher.assemble(
                row["id"],
                int(row["seed"]),
                json.loads(row["scene"]),
                json.loads(row["trajectory"]),
                row["answer"],
                row["query"],
            )
            errors = [
                f"{c.name}: {err}"
                for m in ep.messages
                for c in m.tool_calls or []
                for err in call_errors({"name": c.name, "arguments": c.arguments}, ep.tools)
            ]
            if errors:
                _fail(row, "validate", "invalid call: " + "; ".join(errors[:3]))
            elif not any(m.tool_calls for m in ep.messages):
                _fail(row, "validate", "episode has no tool call")
            else:
                out.update(ep.to_row())
        except Exception as e:  # noqa: BLE001
            _fail(row, "assemble", f"teacher_error:{type(e).__name__}: {e}")
    if row.get("_quarantine_reason"):
        out["_quarantine_reason"] = row["_quarantine_reason"]
        out["_failed_step"] = row["_failed_step"]
        out["_raw"] = json.dumps({k: row.get(k) for k in ("id", "seed", *STEPS)})
    return out
