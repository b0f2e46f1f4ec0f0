"""`config.apply_overrides`: the one way a command line or a stage changes a config
section, validated exactly as the YAML is, its errors naming the full dotted path."""

from __future__ import annotations

import pytest

from ttpa_ray.config import (
    ConstructConfig,
    SampleConfig,
    ServeConfig,
    TeacherConfig,
    TrainConfig,
    apply_overrides,
)


def test_a_nested_section_is_merged_key_by_key():
    base = ConstructConfig(teacher=TeacherConfig(kind="hf", model="/m", max_tokens=64))
    cfg = apply_overrides(base, {"n_episodes": 7, "teacher": {"temperature": 0.2}}, "construct")
    assert cfg.n_episodes == 7 and cfg.teacher.temperature == 0.2
    assert (cfg.teacher.kind, cfg.teacher.model, cfg.teacher.max_tokens) == ("hf", "/m", 64)
    assert base.n_episodes == 200 and base.teacher.temperature == 0.7  # a new config
    deeper = apply_overrides(TrainConfig(), {"lora": {"enabled": True}}, "train")
    assert deeper.lora.enabled is True and deeper.lora.r == TrainConfig().lora.r


def test_a_dict_valued_field_is_replaced_not_merged():
    base = ServeConfig(adapters={"old": "/o"})
    assert apply_overrides(base, {"adapters": {"new": "/n"}}, "serve").adapters == {"new": "/n"}


def test_no_updates_is_the_same_config():
    cfg = SampleConfig()
    assert apply_overrides(cfg, {}, "sample") is cfg


@pytest.mark.parametrize(
    "section, updates, where, named",
    [
        (SampleConfig(), {"n": 0}, "sample", "sample.n: "),
        (SampleConfig(), {"nn": 1}, "sample", "sample.nn: Extra inputs are not permitted"),
        (ConstructConfig(), {"teacher": {"top_p": 0}}, "construct", "construct.teacher.top_p: "),
        (TrainConfig(), {"dpo": {"betaa": 1}}, "pipeline.ttpa", "pipeline.ttpa.dpo.betaa: "),
    ],
)
def test_an_error_names_the_full_dotted_path(section, updates, where, named):
    with pytest.raises(ValueError) as e:
        apply_overrides(section, updates, where)
    assert type(e.value) is ValueError  # not pydantic's: one message, its lines named
    assert str(e.value).startswith(f"invalid {where} settings:\n  ") and named in str(e.value)


def test_validation_applies_where_model_copy_skipped_it():
    """`model_copy(update=...)` takes any value; an override is checked as the YAML is."""
    bad_name = {"adapters": {"a:b": "/x"}}
    assert ServeConfig().model_copy(update=bad_name).adapters == {"a:b": "/x"}
    with pytest.raises(ValueError, match="adapter name 'a:b'"):
        apply_overrides(ServeConfig(), bad_name, "serve")
    # a model validator (engine openai needs a model name) runs too
    with pytest.raises(ValueError, match="engine openai needs `model`"):
        apply_overrides(SampleConfig(mode="n_sample"), {"engine": "openai"}, "sample")
    with pytest.raises(ValueError, match="serve.port: "):
        apply_overrides(ServeConfig(), {"port": 70000}, "serve")
