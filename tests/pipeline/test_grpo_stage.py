"""The opt-in grpo stage: off, the run's stages, dependencies and keys are what they were
without it; on, it reads construct + sft, runs before eval and is evaluated as a fourth
model (the e2e test runs it); its `pipeline.grpo` overrides are checked at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttpa_ray.config import Config, load_config
from ttpa_ray.pipeline import MODELS, STAGES, Pipeline

HERE = Path(__file__).resolve().parent
REDUCED = HERE / "reduced.yaml"
TINY_CPU = HERE.parents[1] / "configs" / "tiny-cpu.yaml"
GPU_CONFIGS = sorted((HERE.parents[1] / "configs").glob("gpu-*.yaml"))


def _with(cfg: Config, **pipeline: object) -> Config:
    """`cfg` with `pipeline` fields replaced, validated as a loaded file is."""
    data = cfg.model_dump(mode="json")
    data["pipeline"].update(pipeline)
    return Config.model_validate(data)


def _keys(cfg: Config, tmp: Path) -> dict[str, str]:
    pipe = Pipeline(cfg, tmp)
    return {s: pipe.key(s) for s in pipe.stages}


@pytest.mark.parametrize("path", [TINY_CPU, REDUCED], ids=["tiny-cpu", "reduced"])
def test_off_by_default_the_graph_and_keys_ignore_grpo(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert cfg.pipeline.grpo_enabled is False
    pipe = Pipeline(cfg, tmp_path)
    assert pipe.stages == tuple(s for s in STAGES if s != "grpo")
    assert pipe.eval_models == ("sft", "dpo_response", "ttpa") == MODELS[:3]
    assert "grpo" not in pipe.depends("eval")
    assert pipe.inputs("report") == pipe.stages[:-1]
    # GRPO's settings (its overrides, `train.grpo`) reach no other stage's key
    data = cfg.model_dump(mode="json")
    data["pipeline"]["grpo"] = {"max_steps": 999, "grpo": {"group_size": 7}}
    data["train"]["grpo"]["kl_beta"] = 0.5
    assert _keys(Config.model_validate(data), tmp_path) == _keys(cfg, tmp_path)
    with pytest.raises(ValueError, match=r"stage 'grpo' is off: set pipeline\.grpo_enabled"):
        pipe.run_all(start="grpo")


def test_on_grpo_reads_construct_and_sft_and_is_evaluated(tmp_path: Path) -> None:
    base = load_config(REDUCED)
    cfg = _with(base, grpo_enabled=True)
    pipe = Pipeline(cfg, tmp_path)
    assert pipe.stages == STAGES
    assert pipe.stages.index("dpo_response") < pipe.stages.index("grpo") < pipe.stages.index("eval")
    assert pipe.depends("grpo") == ("construct", "sft") and "grpo" in pipe.depends("eval")
    assert pipe.eval_models == MODELS and MODELS[-1] == "grpo"
    off, on = _keys(base, tmp_path), _keys(cfg, tmp_path)
    # the stages before it are untouched; eval (a fourth model) and report are new
    assert {s for s in off if off[s] != on[s]} == {"eval", "report"}
    more = _keys(_with(base, grpo_enabled=True, grpo={"max_steps": 3}), tmp_path)
    assert {s for s in on if on[s] != more[s]} == {"grpo", "eval", "report"}
    sft = _keys(_with(base, grpo_enabled=True, sft={"max_steps": 5}), tmp_path)
    assert sft["grpo"] != on["grpo"]  # a new SFT start: GRPO again
    assert pipe.train_cfg("grpo").max_steps == cfg.train.max_steps  # no overrides: `train`


@pytest.mark.parametrize("enabled", [False, True])
def test_pipeline_json_lists_grpo_only_when_on(
    enabled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage loop (each stage's work stubbed: the graph, not the training, is tested
    here; the e2e test runs the real stages)."""
    pipe = Pipeline(_with(load_config(REDUCED), grpo_enabled=enabled), tmp_path, progress=False)
    ran: list[str] = []
    monkeypatch.setattr(pipe, "_stage_fn", lambda stage: lambda: ran.append(stage) or {})
    pipe.run_all()
    names = [s["name"] for s in json.loads((tmp_path / "pipeline.json").read_text())["stages"]]
    assert ran == names == [s for s in STAGES if enabled or s != "grpo"]


def test_grpo_overrides_are_checked_at_load_even_when_off(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  grpo:\n    grpo:\n      group_sise: 8\n")
    with pytest.raises(ValueError, match=r"pipeline\.grpo\.grpo\.group_sise: Extra inputs"):
        load_config(bad)
    bad.write_text("pipeline:\n  grpo_enabled: true\n  grpo:\n    grpo:\n      group_size: 1\n")
    with pytest.raises(ValueError, match=r"pipeline\.grpo\.grpo\.group_size"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "train:\n  grpo:\n    kl_beta: 0.1\n"
        "pipeline:\n  grpo_enabled: true\n  grpo:\n    max_steps: 3\n    grpo:\n      kl_beta: 0.0\n"
    )
    cfg = load_config(good)
    g = cfg.train_for("grpo")
    assert (g.max_steps, g.grpo.kl_beta, g.grpo.group_size) == (3, 0.0, 4)  # merged key by key
    assert cfg.train_for("sft").grpo.kl_beta == 0.1


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_the_gpu_configs_switch_grpo_on(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert cfg.pipeline.grpo_enabled and "grpo" in Pipeline(cfg, tmp_path).eval_models


# The grpo stage end to end (model, four models evaluated, the report's section) runs in
# tests/test_demo.py, on the same reduced config: one pipeline run for both, for CI time.
