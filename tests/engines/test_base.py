"""The engine protocol, parameters and factory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ttpa_ray.engines import (
    ENGINE_KINDS,
    ChatRequest,
    EngineError,
    GenerationParams,
    TextEngine,
    make_engine,
)


class EchoEngine:
    name = "echo"

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[list[str]]:
        return [[r.messages[-1]["content"]] * params.n for r in requests]


def test_protocol_is_structural():
    assert isinstance(EchoEngine(), TextEngine)
    out = EchoEngine().generate(
        [ChatRequest([{"role": "user", "content": "x"}])], GenerationParams(n=2)
    )
    assert out == [["x", "x"]]


def test_params_defaults_and_validation():
    p = GenerationParams()
    assert (p.max_tokens, p.temperature, p.top_p, p.n, p.seed, p.stop) == (
        512,
        0.0,
        1.0,
        1,
        None,
        None,
    )
    assert p.greedy and not GenerationParams(temperature=0.7).greedy
    for bad in ({"n": 0}, {"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            GenerationParams(**bad)


def test_request_defaults():
    r = ChatRequest([{"role": "user", "content": "hi"}])
    assert r.tools is None and r.request_id == ""


def test_make_engine_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError) as err:
        make_engine("llamacpp")
    for kind in ENGINE_KINDS:
        assert kind in str(err.value)


def test_make_engine_builds_each_kind(tmp_path, no_vllm):
    engine = make_engine("openai", base_url="http://127.0.0.1:1/v1", model="m")
    assert engine.name == "openai" and isinstance(engine, TextEngine)
    with pytest.raises(EngineError, match="not found"):
        make_engine("hf", model_path=tmp_path / "missing")
    with pytest.raises(ImportError, match="vLLM is not installed"):
        make_engine("vllm", model="some/model")


def test_engine_error_is_runtime_error():
    assert issubclass(EngineError, RuntimeError)


def test_package_import_is_light():
    code = (
        "import sys, ttpa_ray.engines, ttpa_ray.engines.openai_engine, ttpa_ray.engines.json_output;"
        "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
