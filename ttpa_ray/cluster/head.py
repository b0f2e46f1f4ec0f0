"""A Ray head started as our own process group, on loopback, in its own temp dir.

`ray start --head --block` keeps the `ray` CLI in the foreground with GCS, raylet,
dashboard (the job server) and their workers as its children; started in a new session,
the whole tree is one process group that `stop()` signals. We never run a machine-wide
`ray stop`: it would take down other users' clusters (DESIGN §8).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttpa_ray.cluster.procs import cluster_pids, cmdline, processes_mentioning, start_time
from ttpa_ray.ray_utils import LOOPBACK_ENV


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free right now (all sockets held open until every one is bound)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_bin() -> str:
    """The `ray` CLI next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


@dataclass
class LocalHead:
    """A single-node Ray head with the dashboard's job server, bound to 127.0.0.1.

    `gcs_port` None picks a free port; the fake multi-node provider needs 6379.
    """

    num_cpus: int | None = None
    num_gpus: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    gcs_port: int | None = None
    autoscaling_config: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    object_store_memory: int = 200 * 1024 * 1024
    temp_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    token_path: Path | None = None
    # "pid command line" of what outlived the process group at stop() (then SIGKILLed)
    stragglers: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> str:
        """The GCS address drivers and `ray.init(address=...)` use."""
        return f"{self.host}:{self.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        """The job server (`ray job submit --address ...`)."""
        return f"http://{self.host}:{self.ports['dashboard']}"

    def command(self) -> list[str]:
        names = [
            "dashboard",
            "dashboard_agent_listen",
            "dashboard_agent_grpc",
            "runtime_env_agent",
            "metrics_export",
            "node_manager",
            "object_manager",
            "ray_client_server",
            "port",
        ]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        if self.gcs_port is not None:
            self.ports["port"] = self.gcs_port
        cmd = [
            ray_bin(),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={self.host}",
            f"--port={self.ports['port']}",
            "--include-dashboard=true",
            f"--dashboard-host={self.host}",
            f"--dashboard-port={self.ports['dashboard']}",
            f"--dashboard-agent-listen-port={self.ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={self.ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={self.ports['runtime_env_agent']}",
            f"--metrics-export-port={self.ports['metrics_export']}",
            f"--node-manager-port={self.ports['node_manager']}",
            f"--object-manager-port={self.ports['object_manager']}",
            f"--ray-client-server-port={self.ports['ray_client_server']}",
            f"--object-store-memory={self.object_store_memory}",
            f"--temp-dir={self.temp_dir}",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        if self.autoscaling_config:
            cmd.append(f"--autoscaling-config={self.autoscaling_config}")
        return cmd

    def start(self, timeout_s: float = 90.0) -> LocalHead:
        """Start the head and wait until the job server answers; raise with its log if not."""
        # Short path: Ray's Unix sockets live under it (the limit is ~107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ttpa-head-", dir="/tmp"))
        self.token_path = self.temp_dir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        env = {**os.environ, **LOOPBACK_ENV, **self.client_env(), **self.env}
        # `python` in job entrypoints must be this interpreter (the one with ttpa_ray)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self._log = (self.temp_dir / "head.out").open("wb")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # our own process group: stop() signals exactly it
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc, log = self.proc.returncode, self.log_tail()
                self.stop()  # its temp dir, and anything it started before exiting
                raise RuntimeError(f"ray head exited ({rc}):\n{log}")
            if self._jobs_api_up():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ray head not ready in {timeout_s:.0f}s:\n{self.log_tail()}")

    def client_env(self) -> dict[str, str]:
        """Env for processes that talk to this head (`ray job submit`, drivers): Ray's token
        auth with this head's own token, so no user-wide ~/.ray/auth_token is involved."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _jobs_api_up(self) -> bool:
        # Ray's token auth (on by default once ~/.ray/auth_token exists) answers 401 to a
        # bare request: any HTTP answer means the server is up; clients send the token.
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def log_tail(self, n: int = 4000) -> str:
        path = (self.temp_dir or Path("/nonexistent")) / "head.out"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def processes(self) -> list[int]:
        """Live pids of this head: its process group, processes naming its temp dir, and
        their descendants (Ray gives each worker process a process group of its own)."""
        if self.proc is None:
            return []
        return cluster_pids(self.proc.pid, str(self.temp_dir))

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the head's process group, SIGKILL it after `grace_s` (GCS and raylet
        outlive a SIGTERM for ~30 s), then SIGKILL every other process of this head that
        is still alive (workers, job drivers); remove the temp dir."""
        if self.proc is not None:
            # taken before stopping, with start times: pids get reused
            before = {pid: start_time(pid) for pid in self.processes()}
            pgid = self.proc.pid
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline and _alive(before):
                    time.sleep(0.2)
                if not _alive(before):
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            before.update((p, start_time(p)) for p in processes_mentioning(str(self.temp_dir)))
            left = _alive(before)
            self.stragglers = [f"{pid} {cmdline(pid)[:200].strip()}" for pid in sorted(left)]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace_s
            while _alive(left) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._log.close()
            self.proc = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalHead:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _alive(procs: dict[int, str | None]) -> dict[int, str | None]:
    """The processes of `procs` (pid → start time) that still run (zombies do not)."""
    return {p: t for p, t in procs.items() if t is not None and start_time(p) == t}
