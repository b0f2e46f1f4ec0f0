"""Starting Ray the way every ttpa-ray entry point and test does: on loopback by default.

A local `ray.init()` binds the machine's interface address; with
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` set before Ray starts it binds 127.0.0.1 instead
(DESIGN §8). With `RAY_ADDRESS` set (`ray job submit`), we attach to that cluster.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> Any:
    """`ray.init` once: attach to `RAY_ADDRESS` if set, else a local loopback cluster.

    Returns the Ray context; a second call is a no-op. Dashboard off locally: it is
    one more server, and the embedded default does not need it.
    """
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    if os.environ.get("RAY_ADDRESS"):
        return ray.init(**kwargs)
    from ray._private import ray_constants

    # `ray` may have been imported before the env var was set (it is read at import):
    # then switch the constant itself, or the local node binds the public interface.
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    kwargs.setdefault("configure_logging", False)
    return ray.init(num_cpus=num_cpus, **kwargs)


def remote_args(
    num_cpus: float,
    num_gpus: float = 0.0,
    accelerator_type: str | None = None,
    resources: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Ray remote options (tasks, actors, Ray Data stages) from a stage's resource fields.

    Only what is set is passed: a GPU count of 0 stays unset (a CPU actor), and
    `accelerator_type`/`resources` are what make the autoscaler pick a node group.
    """
    out: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        out["num_gpus"] = num_gpus
    if accelerator_type:
        out["accelerator_type"] = accelerator_type
    if resources:
        out["resources"] = dict(resources)
    return out
