"""Text-generation engines behind one small protocol (`TextEngine.generate`).

- `hf_engine.HFEngine`: transformers on CPU/GPU from a local model directory.
- `vllm_engine.VLLMEngine`: vLLM through Ray Data LLM (`ray.data.llm`); CUDA only.
- `openai_engine.OpenAIEngine`: any OpenAI-compatible `/chat/completions` endpoint.
- `json_output`: extract JSON from model text, validate, one repair round.

Importing this package is light (no torch, transformers, vLLM or Ray); each back end is
imported when built (`make_engine(kind, ...)` or its own module).
"""

from ttpa_ray.engines.base import (
    ENGINE_KINDS,
    ChatRequest,
    EngineError,
    GenerationParams,
    TextEngine,
)
from ttpa_ray.engines.factory import make_engine
from ttpa_ray.engines.json_output import (
    JSONResult,
    extract_json,
    generate_json,
    generate_json_batch,
)

__all__ = [
    "ENGINE_KINDS",
    "ChatRequest",
    "EngineError",
    "GenerationParams",
    "JSONResult",
    "TextEngine",
    "extract_json",
    "generate_json",
    "generate_json_batch",
    "make_engine",
]
