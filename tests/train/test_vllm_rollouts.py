"""GRPO's rollout seam on CPU without vLLM: the `grpo.rollout`/`weight_sync` config, the HF
path behind the seam, and `VLLMRollouts` against scripted engine actors (requests, output
order, weight versions), plus the install hint when vLLM is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ttpa_ray.config import GRPOConfig, SampleConfig, TrainConfig
from ttpa_ray.train import vllm_rollouts as vr
from ttpa_ray.train.grpo_loop import HFRollouts


def train(**grpo: Any) -> dict[str, Any]:
    return {"grpo": grpo}


# -- config -------------------------------------------------------------------------------------


def test_rollout_defaults_to_hf_with_lora_sync():
    g = GRPOConfig()
    assert (g.rollout, g.weight_sync, g.vllm.concurrency, g.vllm.num_gpus) == ("hf", "lora", 1, 1.0)


def test_vllm_lora_sync_needs_lora():
    with pytest.raises(ValueError, match="weight_sync lora .* needs lora.enabled"):
        TrainConfig.model_validate({**train(rollout="vllm"), "lora": {"enabled": False}})
    # None is resolved from the model size later (and validated again then)
    TrainConfig.model_validate(train(rollout="vllm"))
    TrainConfig.model_validate({**train(rollout="vllm"), "lora": {"enabled": True}})
    # rollout hf never syncs: any lora setting
    TrainConfig.model_validate({**train(rollout="hf"), "lora": {"enabled": False}})


def test_vllm_full_sync_needs_lora_off_and_zero_below_3():
    with pytest.raises(ValueError, match="weight_sync full .* needs lora off"):
        TrainConfig.model_validate(
            {**train(rollout="vllm", weight_sync="full"), "lora": {"enabled": True}}
        )
    TrainConfig.model_validate(
        {**train(rollout="vllm", weight_sync="full"), "lora": {"enabled": False}}
    )
    with pytest.raises(ValueError, match="zero_stage < 3"):
        TrainConfig.model_validate({**train(rollout="vllm"), "zero_stage": 3})


def test_vllm_section_is_nested_and_strict():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        GRPOConfig.model_validate({"vllm": {"tensor_parallel_size": 2}})
    with pytest.raises(ValueError, match="Extra inputs"):
        GRPOConfig.model_validate({"concurrency": 2})  # flat key: not a grpo field
    g = GRPOConfig.model_validate({"rollout": "vllm", "vllm": {"concurrency": 3}})
    assert g.vllm.concurrency == 3


def test_engine_args_share_the_vllm_adapter_and_add_lora_slots():
    cfg = TrainConfig.model_validate(
        {**train(rollout="vllm", vllm={"max_model_len": 2048}), "lora": {"r": 12}}
    )
    args = vr.engine_args(cfg)
    assert args["max_model_len"] == 2048 and args["tensor_parallel_size"] == 1
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 1, 16)
    full = TrainConfig.model_validate(
        {**train(rollout="vllm", weight_sync="full"), "lora": {"enabled": False}}
    )
    assert "enable_lora" not in vr.engine_args(full)


def test_without_vllm_the_engines_say_how_to_install(no_vllm):
    cfg = TrainConfig.model_validate(train(rollout="vllm"))
    with pytest.raises(ImportError, match="pip install vllm"):
        vr.start_engines(cfg, "model", "run")  # before any actor (no Ray needed)


# -- the HF path behind the seam -----------------------------------------------------------------


def test_hf_rollouts_return_what_the_sampler_returns(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttpa_ray.engines.base import eos_ids
    from ttpa_ray.sample.hf_sampler import HFSampler, PolicyView

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval()
    eos = eos_ids(tok, model.generation_config.eos_token_id)

    def sampler() -> HFSampler:
        view = PolicyView(model, tok, eos, torch.device("cpu"), 2048)
        return HFSampler(view, SampleConfig(n=3, temperature=1.0, max_tokens=12, seed=5))

    prompts = [tok("hello there")["input_ids"], tok("call a tool")["input_ids"]]
    keys = ["0:a", "0:b"]
    got = HFRollouts(sampler()).groups(prompts, 3, 12, keys)
    direct = sampler()
    assert got == [direct.group(p, 3, 12, k) for p, k in zip(prompts, keys, strict=True)]


# -- VLLMRollouts against scripted engines -------------------------------------------------------


def scripted_engine() -> type:
    """A class defined in a function: Ray pickles it by value (the workers cannot
    import this test module)."""

    class ScriptedEngine:
        """`RolloutEngine`'s protocol without vLLM: completion j of a request is
        [version, j, first prompt id] followed by its seed mod 97, `n` outputs per request."""

        def __init__(self, model: str, llm_args: dict[str, Any]) -> None:
            self.version = -1
            self.loaded: list[tuple[str, int, Any]] = []
            self.seen: list[dict[str, Any]] = []

        def weights_version(self) -> int:
            return self.version

        def load_adapter(self, version: int, path: str) -> None:
            files = sorted(p.name for p in Path(path).iterdir())
            self.loaded.append(("lora", version, (path, files)))
            self.version = version

        def load_weights(self, version: int, state: dict[str, Any]) -> None:
            self.loaded.append(("full", version, {k: v.clone() for k, v in state.items()}))
            self.version = version

        def generate(self, requests: list[dict[str, Any]]) -> list[list[tuple[list[int], float]]]:
            self.seen += requests
            out = []
            for r in requests:
                sp, ids = r["sampling_params"], r["prompt_token_ids"]
                out.append(
                    [
                        ([self.version, j, ids[0], sp["seed"] % 97], -float(j))
                        for j in range(sp["n"])
                    ]
                )
            return out

        def history(self) -> tuple[list[Any], list[dict[str, Any]]]:
            return self.loaded, self.seen

    return ScriptedEngine


class Adapter(torch.nn.Module):
    """Stands in for the PEFT policy: `save_pretrained` writes the adapter files."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def save_pretrained(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        torch.save(self.state_dict(), Path(path) / "adapter_model.bin")


def rollouts(ray: Any, cfg: TrainConfig, tmp_path: Path, rank: int = 0, run: str = "r"):
    engines = vr.start_engines(cfg, "model", f"{tmp_path}/{run}", engine_cls=scripted_engine())
    return vr.VLLMRollouts(engines, cfg, {7, 3}, rank, tmp_path / "adapters"), engines


def test_requests_carry_ids_n_seed_per_key_and_max_tokens(ray_local, tmp_path):
    cfg = TrainConfig.model_validate(
        {**train(rollout="vllm", temperature=0.8, top_p=0.9), "seed": 4}
    )
    r, _ = rollouts(ray_local, cfg, tmp_path)
    reqs = r.requests([[1, 2, 3], [9]], 4, 20, ["0:a", "0:b"])
    assert [q["prompt_token_ids"] for q in reqs] == [[1, 2, 3], [9]]
    sp = reqs[0]["sampling_params"]
    assert (sp["n"], sp["max_tokens"], sp["temperature"], sp["top_p"]) == (4, 20, 0.8, 0.9)
    assert (sp["logprobs"], sp["stop_token_ids"]) == (0, [3, 7])
    seeds = [q["sampling_params"]["seed"] for q in reqs]
    assert seeds[0] != seeds[1] and all(0 <= s < 2**63 for s in seeds)
    # the same key, the same seed (a resumed run replays its groups)
    assert r.requests([[5]], 4, 20, ["0:a"])[0]["sampling_params"]["seed"] == seeds[0]


def test_groups_map_back_in_order_over_engines_and_use_the_synced_adapter(ray_local, tmp_path):
    cfg = TrainConfig.model_validate(
        {**train(rollout="vllm", vllm={"concurrency": 2}), "lora": {"enabled": True}}
    )
    r, engines = rollouts(ray_local, cfg, tmp_path)
    module = Adapter()
    r.sync(0, module)
    prompts = [[10 + i] for i in range(5)]
    keys = [f"0:{i}" for i in range(5)]
    got = r.groups(prompts, 2, 8, keys)
    seeds = [q["sampling_params"]["seed"] % 97 for q in r.requests(prompts, 2, 8, keys)]
    for i, (seqs, logps, fwd) in enumerate(got):
        assert seqs == [[0, j, 10 + i, seeds[i]] for j in range(2)]  # version 0, prompt i
        assert logps == [0.0, -1.0] and fwd == 1 + 8
    r.sync(1, module)
    assert {s[0][0] for s, _, _ in r.groups(prompts, 2, 8, keys)} == {1}
    for e in engines:
        loaded, seen = ray_local.get(e.history.remote())
        assert [(kind, v) for kind, v, _ in loaded] == [("lora", 0), ("lora", 1)]
        assert all(files == ["adapter_model.bin"] for _, _, (_, files) in loaded)
        assert loaded[1][2][0] == str(tmp_path / "adapters" / "step-00000001")
        assert seen  # both engines served prompts
    r.sync(2, module)  # step 0's adapter goes, the previous one stays
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        "step-00000001",
        "step-00000002",
    ]


def test_full_sync_pushes_the_state_dict_with_its_version(ray_local, tmp_path):
    cfg = TrainConfig.model_validate(
        {**train(rollout="vllm", weight_sync="full"), "lora": {"enabled": False}}
    )
    r, engines = rollouts(ray_local, cfg, tmp_path, run="full")
    module = torch.nn.Linear(2, 1)
    r.sync(3, module)
    loaded, _ = ray_local.get(engines[0].history.remote())
    kind, version, state = loaded[-1]
    assert (kind, version, sorted(state)) == ("full", 3, ["bias", "weight"])
    assert torch.equal(state["weight"], module.weight.detach())
    assert r.groups([[4]], 2, 5, ["3:x"])[0][0][0][0] == 3


def test_other_ranks_wait_for_rank_0s_version(ray_local, tmp_path):
    cfg = TrainConfig.model_validate(
        {**train(rollout="vllm", vllm={"sync_timeout_s": 0.5}), "lora": {"enabled": True}}
    )
    rank0, _ = rollouts(ray_local, cfg, tmp_path, rank=0, run="ranks")
    rank1, _ = rollouts(ray_local, cfg, tmp_path, rank=1, run="ranks")  # the same engines
    rank1.sync(0, None)  # records the version only: nothing pushed yet
    with pytest.raises(TimeoutError, match="expected 0"):
        rank1.groups([[1]], 2, 4, ["0:a"])
    rank0.sync(0, Adapter())
    assert rank1.groups([[1]], 2, 4, ["0:a"])[0][0][0][0] == 0
