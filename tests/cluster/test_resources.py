"""Stage resources from config reach Ray: Ray Data stages, Ray Train's worker group, Serve
replicas. These requests are what an autoscaler reads to pick a node group."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ttpa_ray.config import (
    ConstructConfig,
    SampleConfig,
    ServeConfig,
    TeacherConfig,
    TrainConfig,
    load_config,
)
from ttpa_ray.ray_utils import remote_args


def map_ops(ds: Any) -> dict[str, dict[str, Any]]:
    """Name → Ray remote args of every map operator in a Dataset's logical plan."""
    out, todo, i = {}, [ds._logical_plan.dag], 0
    while todo:
        op = todo.pop()
        args = getattr(op, "ray_remote_args", None)
        if args is not None:
            out[f"{op.name}#{i}"] = dict(args)
            i += 1
        todo += list(op.input_dependencies)
    return out


def test_remote_args_pass_only_what_is_set():
    assert remote_args(0.5) == {"num_cpus": 0.5}
    assert remote_args(2, 1, "H100", {"pool": 1}) == {
        "num_cpus": 2,
        "num_gpus": 1,
        "accelerator_type": "H100",
        "resources": {"pool": 1},
    }


def test_construct_workers_request_the_configured_resources(ray_local):
    from ttpa_ray.construct.stage import build_dataset

    cfg = ConstructConfig(n_episodes=4, num_cpus=0.25, resources={"cpu_pool": 0.5})
    ops = map_ops(build_dataset(cfg, [[0, 1, 2, 3]]))
    assert ops and all(a["resources"] == {"cpu_pool": 0.5} for a in ops.values()), ops
    assert all(a["num_cpus"] == 0.25 for a in ops.values())


def test_hf_teacher_actors_request_gpus_and_the_accelerator(ray_local):
    from ttpa_ray.construct.stage import build_dataset

    teacher = TeacherConfig(kind="hf", model="/m", device="cuda", num_gpus=1, accelerator_type="L4")
    ops = map_ops(build_dataset(ConstructConfig(teacher=teacher), [[0]]))
    assert {a.get("accelerator_type") for a in ops.values()} == {"L4"}
    assert {a.get("num_gpus") for a in ops.values()} == {1}


def test_sampler_actors_request_the_configured_resources(ray_local):
    from ttpa_ray.sample.stage import build_dataset
    from ttpa_ray.schema.turns import TURN_SCHEMA

    cfg = SampleConfig(
        policy="/m",
        num_cpus=2,
        num_gpus=1,
        device="cuda",
        accelerator_type="H100",
        resources={"tps": 1},
    )
    turns = pa.Table.from_pylist([], schema=TURN_SCHEMA)
    ops = map_ops(build_dataset(cfg, turns))
    sampler = next(a for name, a in ops.items() if "SamplerStage" in name)
    assert sampler == {
        "num_cpus": 2,
        "num_gpus": 1,
        "accelerator_type": "H100",
        "resources": {"tps": 1},
    }
    # ESM scoring and pair building stay light CPU tasks: no GPU node is held for them
    light = [a for name, a in ops.items() if "SamplerStage" not in name]
    assert light and all("num_gpus" not in a and "accelerator_type" not in a for a in light)


def test_train_workers_scale_from_config():
    from ttpa_ray.train.trainer import scaling_config

    sc = scaling_config(
        TrainConfig(
            workers=32,
            use_gpu=True,
            cpus_per_worker=6,
            accelerator_type="H100",
            resources_per_worker={"ib": 1},
        )
    )
    assert sc.num_workers == 32 and sc.use_gpu and sc.accelerator_type == "H100"
    assert sc.resources_per_worker == {"ib": 1, "CPU": 6, "GPU": 1.0}
    cpu = scaling_config(TrainConfig(workers=2, cpus_per_worker=1))
    assert cpu.resources_per_worker == {"CPU": 1} and not cpu.use_gpu


def test_serve_replicas_request_the_configured_resources():
    from ttpa_ray.serve.app import serve_options

    opts = serve_options(
        ServeConfig(
            num_gpus=1,
            device="cuda",
            accelerator_type="A10G",
            resources={"serve_pool": 1},
            num_replicas=3,
        )
    )
    assert opts["num_replicas"] == 3
    assert opts["ray_actor_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "accelerator_type": "A10G",
        "resources": {"serve_pool": 1},
    }


def test_gpu_configs_fill_the_resources_for_real_nodes():
    c7, c70 = load_config("configs/gpu-7b.yaml"), load_config("configs/gpu-70b.yaml")
    assert c7.train.use_gpu and c7.train.accelerator_type == "H100"
    assert c70.train.workers == 32 and c70.train.zero_stage == 3
    for c in (c7, c70):
        assert c.construct.teacher.kind == c.sample.engine == c.serve.backend == "vllm"
        assert c.sample.accelerator_type == c.construct.teacher.accelerator_type == "H100"
    # a 70B model needs a whole 8-GPU node per engine
    assert c70.sample.tensor_parallel_size == c70.serve.tensor_parallel_size == 8


def test_reference_pass_runs_where_training_runs():
    from ttpa_ray.train.trainer import reference_placement

    remote, device, dtype = reference_placement(
        TrainConfig(use_gpu=True, accelerator_type="H100", cpus_per_worker=8)
    )
    assert remote == {"num_cpus": 1.0, "num_gpus": 1, "accelerator_type": "H100"}
    assert (device, dtype) == ("cuda", "bfloat16")
    assert reference_placement(TrainConfig(use_gpu=True, bf16=False))[2] == "float32"
    assert reference_placement(TrainConfig(cpus_per_worker=0.5)) == (
        {"num_cpus": 0.5},
        "cpu",
        "float32",
    )
