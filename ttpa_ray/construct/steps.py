"""The four construction steps as row functions, independent of Ray (DESIGN §3).

A row carries `id`, `seed` and, as steps run, the JSON of `scene`, `trajectory`, and the
text of `answer`, `query` (the query last: reversed construction). A step that fails
marks the row with `_quarantine_reason` / `_failed_step` and later steps pass it through,
so each stage keeps one output row per input row and the counts add up.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol

import pyarrow as pa

from ttpa_ray.construct.rows import add_seconds, fail
from ttpa_ray.schema.records import EPISODE_SCHEMA, Episode
from ttpa_ray.schema.tools import ToolSpec
from ttpa_ray.schema.validate import call_errors
from ttpa_ray.tools.catalog import catalog_tools

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
    """What writes episodes: steps (row by row, or `step_batch` for LLM teachers, see
    `step_rows`), then `assemble` builds the Episode from the steps' outputs."""

    name: str

    def assemble(
        self,
        row_id: str,
        seed: int,
        scene: dict[str, Any],
        trajectory: dict[str, Any],
        answer: str,
        query: str,
    ) -> Episode: ...


class RowTeacher(Teacher, Protocol):
    """A teacher whose steps are functions of one row's JSON-able dicts."""

    def scene(self, seed: int) -> dict[str, Any]: ...
    def trajectory(self, scene: dict[str, Any], seed: int) -> dict[str, Any]: ...
    def answer(self, scene: dict[str, Any], trajectory: dict[str, Any], seed: int) -> str: ...
    def query(
        self, scene: dict[str, Any], trajectory: dict[str, Any], answer: str, seed: int
    ) -> str: ...


class SchemaTeacher:
    """The deterministic, model-free teacher (`construct/schema_teacher.py`)."""

    name = "schema"

    def __init__(
        self,
        catalog: list[ToolSpec],
        window: int = 20,
        n_tools: tuple[int, int] = (7, 10),
        n_constraints: tuple[int, int] = (4, 7),
        n_calls: tuple[int, int] = (4, 7),
    ):
        self.catalog = catalog
        self.window, self.n_tools, self.n_constraints = window, tuple(n_tools), tuple(n_constraints)
        self.n_calls = tuple(n_calls)

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

        return step_trajectory(scene, seed, self.catalog, self.n_calls)

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


def make_teacher(config: dict[str, Any], with_engine: bool = True) -> Teacher:
    """Build the teacher a `ConstructConfig` (as a dict) asks for, with its catalog.

    LLM teachers load their model lazily (on the first step), and not at all with
    `with_engine=False` (workers that only assemble episodes). `vllm` has no in-process
    engine: its steps run as Ray Data LLM processors (`construct/vllm_stage.py`).
    """
    t = config["teacher"]
    catalog = list(catalog_tools(config["catalog"]))
    if t["kind"] == "schema":
        return SchemaTeacher(
            catalog,
            config["window"],
            tuple(config["n_tools"]),
            tuple(config["n_constraints"]),
            tuple(config["n_calls"]),
        )
    from ttpa_ray.config import ConstructConfig
    from ttpa_ray.construct.llm_teacher import LLMTeacher
    from ttpa_ray.engines.base import GenerationParams

    params = GenerationParams(
        max_tokens=t["max_tokens"],
        temperature=t["temperature"],
        top_p=t["top_p"],
        seed=config["seed"],
    )
    factory = _engine_factory(t) if with_engine and t["kind"] != "vllm" else None
    return LLMTeacher(t["kind"], catalog, factory, params, ConstructConfig.model_validate(config))


def _engine_factory(t: dict[str, Any]) -> Any:
    from ttpa_ray.engines.factory import make_engine

    if t["kind"] == "hf":
        return lambda: make_engine(
            "hf",
            model_path=t["model"],
            device=t["device"],
            dtype=t["dtype"],
            batch_size=t["batch_size"],
            max_prompt_tokens=t["max_prompt_tokens"],
        )
    if t["kind"] == "openai":
        key_env = t.get("api_key_env")
        if key_env and key_env not in os.environ:
            raise ValueError(f"teacher.api_key_env: environment variable {key_env} is not set")
        return lambda: make_engine(
            "openai",
            base_url=t["base_url"],
            model=t["model"],
            api_key=os.environ[key_env] if key_env else None,
            max_concurrency=t["max_concurrency"],
            max_retries=t["max_retries"],
            timeout_s=t["timeout_s"],
        )
    raise ValueError(f"teacher kind {t['kind']!r} has no in-process engine")


def step_rows(teacher: Teacher, step: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `step` over a batch: batched for teachers with `step_batch`, else row by row."""
    batch_fn = getattr(teacher, "step_batch", None)
    if batch_fn is not None:
        return list(batch_fn(step, rows))
    return [run_step(teacher, step, r) for r in rows]  # type: ignore[arg-type]


def run_step(teacher: RowTeacher, step: str, row: dict[str, Any]) -> dict[str, Any]:
    """Run one step on one row in place. Errors become the row's quarantine reason:
    `Restart` (the teacher gave up, the paper's restart signal) and any teacher error."""
    if row.get("_quarantine_reason"):
        return row
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
        fail(row, step, f"{kind}: {e}")
    add_seconds(row, step, time.perf_counter() - t0)
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
                fail(row, "validate", "invalid call: " + "; ".join(errors[:3]))
            elif not any(m.tool_calls for m in ep.messages):
                fail(row, "validate", "episode has no tool call")
            else:
                out.update(ep.to_row())
        except Exception as e:  # noqa: BLE001
            fail(row, "assemble", f"teacher_error:{type(e).__name__}: {e}")
    if row.get("_quarantine_reason"):
        out["_quarantine_reason"] = row["_quarantine_reason"]
        out["_failed_step"] = row["_failed_step"]
        out["_raw"] = json.dumps({k: row.get(k) for k in ("id", "seed", *STEPS)})
    return out
