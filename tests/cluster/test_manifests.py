"""cluster/: the `ray up` configs, the KubeRay manifests and the Dockerfile they use.

Fast and offline: nothing is launched. The cluster-launcher configs go through Ray's own
preparation and validation (the autoscaler's JSON schema); the KubeRay clusters through the
conversion the KubeRay autoscaler itself runs on a RayCluster, which also validates; the
RayService's Serve config through Serve's schema, our ServeConfig and the call Serve makes
to the app builder.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray._common.utils import RESOURCE_CONSTRAINT_PREFIX, import_attr
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config

from ttpa_ray.config import ServeConfig

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
VM_CONFIGS = ["aws.yaml", "gcp.yaml"]
JOB_MODULES = {"construct", "sample", "train", "serve", "eval", "pipeline"}
SHARED = "/mnt/shared"
GPU_KEY = "nvidia.com/gpu"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def vm_config(name: str) -> dict[str, Any]:
    return load(CLUSTER / name)


def ray_schema() -> dict[str, Any]:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def image_repo_dir() -> str:
    """Where the image keeps the repo (the Dockerfile's WORKDIR)."""
    match = re.search(r"^WORKDIR\s+(\S+)", dockerfile(), re.M)
    assert match, "cluster/Dockerfile: no WORKDIR"
    return match.group(1).rstrip("/")


def accelerator_keys(resources: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if k.startswith(RESOURCE_CONSTRAINT_PREFIX)}


def find_values(node: Any, key: str) -> list[Any]:
    """Every value of `key` anywhere in a nested dict/list."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and v is not None:
                found.append(v)
            found += find_values(v, key)
    elif isinstance(node, list):
        for v in node:
            found += find_values(v, key)
    return found


def requested_accelerator_types() -> set[str]:
    """The accelerator types the GPU configs ask Ray for (vLLM stages, Serve replicas)."""
    types: set[str] = set()
    for name in ["gpu-7b.yaml", "gpu-70b.yaml", "serve-vllm.yaml"]:
        path = REPO / "configs" / name
        if path.exists():
            types |= set(find_values(load(path), "accelerator_type"))
    assert types, "configs/gpu-7b.yaml names no accelerator_type"
    return types


# -- cluster-launcher configs (ray up) -------------------------------------------------------


def vm_problems(cfg: dict[str, Any]) -> list[str]:
    """What is wrong with a `ray up` config beyond its schema (empty: nothing)."""
    problems = []
    types = cfg["available_node_types"]
    head_name = cfg["head_node_type"]
    head = types[head_name]
    if head["resources"].get("GPU", 0) != 0:
        problems.append(f"head {head_name} has GPUs")
    if accelerator_keys(head["resources"]):
        problems.append(f"head {head_name} declares an accelerator type")
    if head["resources"].get("CPU", 1) == 0:
        problems.append("head has no CPUs: the job driver and the CPU stages run there")
    head_start = " ".join(cfg["head_start_ray_commands"])
    if re.search(r"--num-gpus[= ]+[1-9]", head_start):
        problems.append("head start command gives the head GPUs")
    if re.search(r"--num-cpus[= ]+0\b", head_start):
        problems.append("head start command gives the head no CPUs")
    if "--dashboard-host" not in head_start or "--head" not in head_start:
        problems.append("head start command does not bind the dashboard")
    workers = {k: v for k, v in types.items() if k != head_name}
    gpu_types = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    if not gpu_types:
        problems.append("no GPU worker type")
    for name, t in gpu_types.items():
        if t.get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0 (GPU nodes only on demand)")
        if t.get("max_workers", 0) <= 0:
            problems.append(f"{name}: max_workers must be > 0")
        if list(accelerator_keys(t["resources"]).values()) != [1]:
            problems.append(f"{name}: declare one {RESOURCE_CONSTRAINT_PREFIX}<type>: 1")
    cpu_types = [k for k, v in workers.items() if v["resources"].get("GPU", 0) == 0]
    if not cpu_types:
        problems.append("no CPU-only worker type")
    for name in cpu_types:
        if workers[name].get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0")
    if sum(t.get("max_workers", 0) for t in workers.values()) > cfg["max_workers"]:
        problems.append("global max_workers is below the sum of the groups' max_workers")
    if not any("ttpa-ray[gpu]" in c for c in cfg.get("setup_commands", [])):
        problems.append("setup_commands do not install ttpa-ray[gpu]")
    if "idle_timeout_minutes" not in cfg:
        problems.append("no idle_timeout_minutes")
    return problems


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_passes_ray_validation(name: str) -> None:
    cfg = vm_config(name)
    jsonschema.validate(cfg, ray_schema())  # the file as written
    prepared = prepare_config(copy.deepcopy(cfg))  # merged with the provider's defaults
    validate_config(prepared)  # what `ray up` runs (offline: no cloud client needed)
    assert prepared["provider"]["type"] == name.split(".")[0]


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_shape(name: str) -> None:
    assert vm_problems(vm_config(name)) == []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda c: c.update(max_worker=4), jsonschema.ValidationError),  # unknown key
        (lambda c: c.update(max_workers="16"), jsonschema.ValidationError),  # wrong type
        (
            lambda c: c["available_node_types"]["ray.head.cpu"].pop("node_config"),
            jsonschema.ValidationError,
        ),
        (
            lambda c: next(iter(c["available_node_types"].values()))["resources"].update(GPU=0.5),
            jsonschema.ValidationError,
        ),
        (lambda c: c.update(head_node_type="nope"), ValueError),
    ],
    ids=["unknown-key", "wrong-type", "no-node-config", "fractional-gpu", "bad-head"],
)
def test_broken_vm_config_fails_validation(change: Any, error: type[Exception]) -> None:
    cfg = vm_config("aws.yaml")
    change(cfg)
    with pytest.raises(error):
        validate_config(prepare_config(cfg))


def test_broken_vm_config_fails_shape_checks() -> None:
    cfg = vm_config("aws.yaml")
    types = cfg["available_node_types"]
    types[cfg["head_node_type"]]["resources"]["GPU"] = 1
    gpu = next(k for k, v in types.items() if v["resources"].get("GPU", 0) > 1)
    types[gpu]["min_workers"] = 1
    cfg["setup_commands"] = ["pip install -e ~/ttpa-ray"]
    problems = " | ".join(vm_problems(cfg))
    assert "head ray.head.cpu has GPUs" in problems
    assert f"{gpu}: min_workers must be 0" in problems
    assert "ttpa-ray[gpu]" in problems


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_provides_requested_accelerators(name: str) -> None:
    """Every accelerator type the GPU configs ask for is a worker group the autoscaler can
    start from zero, under the resource name Ray gives such nodes."""
    cfg = vm_config(name)
    declared = {
        k[len(RESOURCE_CONSTRAINT_PREFIX) :]
        for t in cfg["available_node_types"].values()
        for k in accelerator_keys(t["resources"])
    }
    assert requested_accelerator_types() <= declared


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_matches_ray_and_repo(name: str) -> None:
    cfg = vm_config(name)
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert any(f"ray[llm]=={ray.__version__}" in c for c in cfg["setup_commands"])
    # the repo is synced to the path setup_commands install from
    assert cfg["file_mounts"] == {"~/ttpa-ray": "."}
    assert any("$HOME/ttpa-ray[gpu]" in c for c in cfg["setup_commands"])
    assert any(f"{SHARED}:{SHARED}" in o for o in cfg["docker"]["run_options"])
    assert "**/.venv" in cfg["rsync_exclude"]


# -- documented commands ---------------------------------------------------------------------


def check_job_command(command: str, repo_prefix: str = "") -> None:
    """`python -m jobs.<stage> --config FILE ...`: a known stage and a config in the repo."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    module = argv[2]
    assert module.startswith("jobs."), command
    stage = module.split(".", 1)[1]
    assert stage in JOB_MODULES, command
    if (REPO / "jobs").is_dir():  # jobs/ is being written alongside this directory
        jobs = REPO / "jobs"
        assert (jobs / f"{stage}.py").exists() or (jobs / stage).is_dir(), f"no {module}"
    config = argv[argv.index("--config") + 1]
    if repo_prefix:
        assert config.startswith(repo_prefix + "/"), f"{config}: not under {repo_prefix}"
        config = config[len(repo_prefix) + 1 :]
    path = REPO / config
    if not path.exists() and path.name == "gpu-70b.yaml":
        pytest.skip("configs/gpu-70b.yaml is not written yet (being added to configs/)")
    assert path.exists(), f"{command}: {config} is not in the repo"
    for flag in ("--run-dir", "--out"):
        if flag in argv:
            assert argv[argv.index(flag) + 1].startswith(SHARED + "/"), command


@pytest.mark.parametrize("name", [*VM_CONFIGS, "kuberay/rayjob.yaml"])
def test_documented_job_commands(name: str) -> None:
    text = (CLUSTER / name).read_text()
    commands = re.findall(r"(python -m jobs\.\S+ --config \S+(?: --[\w-]+ \S+)*)", text)
    assert commands, f"{name} documents no job command"
    for command in commands:
        if command.split("--config ")[1].startswith("/"):
            check_job_command(command, image_repo_dir())
        else:
            check_job_command(command)


# -- KubeRay ---------------------------------------------------------------------------------


def manifest(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: one document expected"
    return docs[0]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    # RayJob embeds a RayCluster spec as rayClusterSpec, RayService as rayClusterConfig.
    key = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[doc["kind"]]
    assert key in doc["spec"], f"{doc['kind']}: spec.{key} missing"
    return doc["spec"][key]


def autoscaler_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling config KubeRay's autoscaler derives from this cluster (validated by
    Ray's validate_config inside): node types with their resources and min/max."""
    ray_cr = {
        "metadata": {"name": doc["metadata"]["name"], "namespace": "default"},
        "spec": cluster_spec(doc),
    }
    return _derive_autoscaling_config_from_ray_cr(ray_cr)


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def kuberay_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append("apiVersion must be ray.io/v1")
    if not doc.get("metadata", {}).get("name"):
        problems.append("metadata.name missing")
    spec = cluster_spec(doc)
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    if "idleTimeoutSeconds" not in spec.get("autoscalerOptions", {}):
        problems.append("autoscalerOptions.idleTimeoutSeconds missing")
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion {spec.get('rayVersion')} != {ray.__version__}")
    head = spec["headGroupSpec"]
    if head.get("rayStartParams", {}).get("num-gpus") != "0":
        problems.append("head: rayStartParams num-gpus must be '0'")
    if head.get("rayStartParams", {}).get("num-cpus") == "0":
        problems.append("head: keep CPUs for the driver and the CPU stages")
    for c in containers(head):
        if GPU_KEY in c.get("resources", {}).get("limits", {}):
            problems.append("head asks for GPUs")
    groups = spec.get("workerGroupSpecs") or []
    if not any(GPU_KEY in c["resources"]["limits"] for g in groups for c in containers(g)):
        problems.append("no GPU worker group")
    for g in groups:
        name = g.get("groupName")
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        if lo is None or hi is None or not 0 <= lo <= hi or hi == 0:
            problems.append(f"{name}: need 0 <= minReplicas <= maxReplicas, maxReplicas > 0")
        elif not lo <= g.get("replicas", 0) <= hi:
            problems.append(f"{name}: replicas outside [minReplicas, maxReplicas]")
        for c in containers(g):
            limits = c.get("resources", {}).get("limits", {})
            if GPU_KEY in limits:
                if limits.get(GPU_KEY) != c["resources"].get("requests", {}).get(GPU_KEY):
                    problems.append(f"{name}: GPU requests must equal limits")
                tolerated = {t.get("key") for t in g["template"]["spec"].get("tolerations", [])}
                if GPU_KEY not in tolerated or not g["template"]["spec"].get("nodeSelector"):
                    problems.append(f"{name}: GPU group needs a nodeSelector and toleration")
                if RESOURCE_CONSTRAINT_PREFIX not in g.get("rayStartParams", {}).get(
                    "resources", ""
                ):
                    problems.append(f"{name}: declare the accelerator_type resource")
    # every Ray container: the same image, the shared volume at /mnt/shared
    for g in [head, *groups]:
        volumes = {v["name"]: v for v in g["template"]["spec"].get("volumes", [])}
        for c in containers(g):
            if not c["image"].endswith("/ttpa-ray:0.1.0"):
                problems.append(f"{c['name']}: image {c['image']} is not cluster/Dockerfile's")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            claim = volumes.get(mounts.get(SHARED, ""), {}).get("persistentVolumeClaim", {})
            if claim.get("claimName") != shared_claim():
                problems.append(f"{c['name']}: {SHARED} is not the shared PVC")
    return problems


def shared_claim() -> str:
    pvc = manifest("pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    return pvc["metadata"]["name"]


@pytest.mark.parametrize(
    ("name", "kind"), [("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")]
)
def test_kuberay_manifest_shape(name: str, kind: str) -> None:
    doc = manifest(name)
    assert doc["kind"] == kind
    assert kuberay_problems(doc) == []


def test_broken_kuberay_manifest_fails_checks() -> None:
    doc = manifest("rayjob.yaml")
    spec = doc["spec"]["rayClusterSpec"]
    spec["enableInTreeAutoscaling"] = False
    gpu = spec["workerGroupSpecs"][0]
    gpu["minReplicas"], gpu["maxReplicas"] = 3, 2
    del containers(gpu)[0]["resources"]["limits"][GPU_KEY]
    problems = " | ".join(kuberay_problems(doc))
    assert "enableInTreeAutoscaling" in problems
    assert "minReplicas <= maxReplicas" in problems
    assert "no GPU worker group" in problems


def test_broken_kuberay_resources_fail_ray_validation() -> None:
    doc = manifest("rayjob.yaml")
    gpu = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpu["rayStartParams"]["resources"] = '"{\\"accelerator_type:H100\\": 0.5}"'
    with pytest.raises(AssertionError):  # Ray accepts integer custom resources only
        autoscaler_view(doc)


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayservice.yaml"])
def test_kuberay_autoscaler_view(name: str) -> None:
    """What KubeRay's autoscaler will see: a GPU-less head and GPU groups carrying their
    accelerator type, so they can be started from zero."""
    view = autoscaler_view(manifest(name))
    types = view["available_node_types"]
    head = types.pop("headgroup")
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu_groups = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) > 0}
    assert gpu_groups
    for t in gpu_groups.values():
        assert list(accelerator_keys(t["resources"]).values()) == [1]
        assert t["max_workers"] >= max(t["min_workers"], 1)


def test_rayjob() -> None:
    doc = manifest("rayjob.yaml")
    spec = doc["spec"]
    # KubeRay splices the entrypoint into a shell command unquoted: keep it one command
    assert not re.search(r"[;&|`$]", spec["entrypoint"]), spec["entrypoint"]
    check_job_command(spec["entrypoint"], image_repo_dir())
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0
    view = autoscaler_view(doc)
    gpu = [t for t in view["available_node_types"].values() if t["resources"].get("GPU", 0)]
    assert all(t["min_workers"] == 0 for t in gpu), "the job's GPU groups start from zero"
    declared = {
        k[len(RESOURCE_CONSTRAINT_PREFIX) :]
        for t in view["available_node_types"].values()
        for k in accelerator_keys(t["resources"])
    }
    assert requested_accelerator_types() <= declared


# -- RayService: the Serve config -------------------------------------------------------------


def serve_config() -> dict[str, Any]:
    raw = manifest("rayservice.yaml")["spec"]["serveConfigV2"]
    assert isinstance(raw, str), "serveConfigV2 is a YAML string"
    return yaml.safe_load(raw)


def test_serve_config_validates() -> None:
    from ray.serve.schema import ServeDeploySchema

    from ttpa_ray.serve.deploy import APP_NAME, serve_config_file
    from ttpa_ray.serve.llm_config import llm_config_kwargs

    data = serve_config()
    schema = ServeDeploySchema.model_validate(data)  # what the RayService deploys
    assert [a.name for a in schema.applications] == [APP_NAME]
    app = data["applications"][0]
    cfg = ServeConfig.model_validate(app["args"])
    assert cfg.backend == "vllm" and cfg.host == "0.0.0.0"
    assert data["http_options"] == {"host": cfg.host, "port": cfg.port}
    # the same application serve_config_file writes for this ServeConfig
    ours = serve_config_file(cfg)["applications"][0]
    assert {k: app[k] for k in ("import_path", "route_prefix")} == {
        k: ours[k] for k in ("import_path", "route_prefix")
    }
    assert str(cfg.model).startswith(SHARED + "/")
    # Ray Serve LLM loads adapters by name from one storage prefix: <root>/<name> (Ray 2.60
    # takes s3://, gs:// or Azure prefixes only, not the shared volume)
    kwargs = llm_config_kwargs(cfg)
    assert cfg.adapters, "the example serves LoRA adapters"
    root = kwargs["lora_config"]["dynamic_lora_loading_path"]
    assert root.startswith("s3://")
    assert all(path == f"{root}/{name}" for name, path in cfg.adapters.items())


def test_serve_import_path_resolves_without_vllm() -> None:
    had_vllm = "vllm" in sys.modules
    builder = import_attr(serve_config()["applications"][0]["import_path"])
    from ttpa_ray.serve.app import build_app

    assert builder is build_app and callable(builder)
    if not had_vllm:
        assert "vllm" not in sys.modules


def test_serve_builds_the_app_from_args(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call Ray Serve makes with the config's `args` (its builder must take exactly one
    parameter); ray.serve.llm's app is stubbed (no vLLM here)."""
    from ray import serve
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    import ttpa_ray.serve.llm_config as llm_config

    @serve.deployment
    class Stub:
        pass

    stub: Any = Stub  # a serve.Deployment (the decorator's type is lost on mypy)
    seen: list[ServeConfig] = []

    def build_vllm_app(cfg: ServeConfig) -> Any:
        seen.append(cfg)
        return stub.bind()

    monkeypatch.setattr(llm_config, "build_vllm_app", build_vllm_app)
    app = serve_config()["applications"][0]
    built = call_user_app_builder_with_args_if_necessary(
        import_attr(app["import_path"]), app["args"]
    )
    assert isinstance(built, serve.Application)
    assert seen == [ServeConfig.model_validate(app["args"])]


def test_rayservice_capacity() -> None:
    """The Serve replicas fit the GPU group: each asks for the group's accelerator type,
    and max_replicas x tensor_parallel_size GPUs exist at the group's maximum."""
    doc = manifest("rayservice.yaml")
    cfg = ServeConfig.model_validate(serve_config()["applications"][0]["args"])
    view = autoscaler_view(doc)["available_node_types"]
    key = f"{RESOURCE_CONSTRAINT_PREFIX}{cfg.accelerator_type}"
    groups = [t for t in view.values() if key in t["resources"]]
    assert groups, f"no worker group provides {key}"
    assert all(t["min_workers"] >= 1 for t in groups), "the endpoint keeps one GPU pod"
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in groups)
    assert cfg.max_replicas * cfg.tensor_parallel_size <= gpus
    assert cfg.min_replicas * cfg.tensor_parallel_size <= sum(
        t["min_workers"] * t["resources"]["GPU"] for t in groups
    )


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = dockerfile()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [f"rayproject/ray:{ray.__version__}-py311-gpu"]
    assert "'.[gpu]'" in text
    assert f"ray[llm]=={ray.__version__}" in text
    for part in ("ttpa_ray", "jobs", "configs"):
        assert re.search(rf"^COPY .*\b{part} \./{part}$", text, re.M), part
    # jobs/ is not an installed package: `python -m jobs.x` needs the repo on the path
    assert re.search(rf"^ENV PYTHONPATH={re.escape(image_repo_dir())}$", text, re.M)
