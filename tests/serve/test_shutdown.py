"""`ttpa-ray serve` stops cleanly: on SIGTERM (systemd, Docker, Kubernetes) or Ctrl-C
(SIGINT to the terminal's process group) it lets the request in flight finish, stops
Serve and the local Ray it started, exits 0 and leaves no process of its session behind.
And binding a non-loopback address without an API key is warned about."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ttpa_ray.cluster.head import free_ports
from ttpa_ray.serve.deploy import StopSignals, is_loopback, warn_if_open

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.5", "8.8.8.8", "example.com", "", "::2"]
)
def test_network_hosts(host):
    assert not is_loopback(host)


def test_open_endpoint_warning(caplog):
    caplog.set_level(logging.WARNING, logger="ttpa_ray")
    assert warn_if_open("0.0.0.0", None)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "0.0.0.0" in text and "without an API key" in text and "--api-key-env NAME" in text
    caplog.clear()
    # a key on a public address, or loopback without one: nothing to say
    assert not warn_if_open("0.0.0.0", "sekret")
    assert not warn_if_open("127.0.0.1", None)
    assert not caplog.records


def test_stop_signals_set_events_and_restore():
    """A first signal asks to stop, a second to stop without draining; nothing raises
    in the main thread, and the handlers before them come back."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signals = StopSignals()
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.stop.wait(5) and not signals.hurry.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.hurry.wait(5)
        assert signals.received == "SIGTERM"
    finally:
        signals.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def _session_members(sid: int) -> dict[int, str]:
    """Live processes (not zombies) of session `sid`: pid → command line. Ray gives its
    workers process groups of their own, so the session, not the group, holds them all."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            out[int(entry)] = cmd.decode(errors="replace")[:120]
    return out


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _stream(url: str, started: threading.Event, out: dict[str, Any]) -> None:
    """One streamed completion long enough to be in flight when the server is told to
    stop (with seed 1 the tiny model writes all 1500 tokens: ~3 s here). Sets `started`
    at its first chunk and records the rest."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 1500,
        "temperature": 1.0,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            out["status"] = resp.status
            events = []
            for line in resp:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
                    started.set()
            out["events"] = events
    except (OSError, urllib.error.URLError) as exc:
        out["error"] = repr(exc)
    finally:
        out["done_at"] = time.monotonic()
        started.set()


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_stop_drains_and_leaves_nothing(serve_model_dir, how):
    """sigterm: SIGTERM to the server alone; ctrl-c: SIGINT to its whole process group,
    as a terminal sends it (Ray's own processes in the group ignore it)."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    # Ray's temp dir of its own (short: its Unix sockets live there), so the session, its
    # sockets and logs are this server's alone
    tmp = Path(tempfile.mkdtemp(prefix="ttpa-stop-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ttpa_ray.cli", "serve", "--model", str(serve_model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: pgid = sid = pid
        )
    t0 = time.monotonic()

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        # up: /healthz answers and the CLI says it serves (its handlers are in place)
        deadline = t0 + 120
        while True:
            assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log_tail()}"
            assert time.monotonic() < deadline, f"server not up in 120 s:\n{log_tail()}"
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                if _get(f"{url}/healthz") and "Ctrl-C stops" in log_tail():
                    break
            time.sleep(0.5)
        up_s = time.monotonic() - t0

        started, result = threading.Event(), {}
        client = threading.Thread(target=_stream, args=(url, started, result), daemon=True)
        client.start()
        assert started.wait(30), "no first chunk in 30 s"
        inflight = _get(f"{url}/stats")["inflight"]
        signalled_at = time.monotonic()
        if how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 60 s after {how}:\n{log_tail()}")
        stop_s = time.monotonic() - signalled_at
        client.join(30)

        assert rc == 0, f"exit code {rc} after {how}:\n{log_tail()}"
        assert "Aborted" not in log_tail() and "SIGTERM received" not in log_tail()
        # the request in flight at the signal was served to its end
        assert inflight == 1
        assert result.get("status") == 200, f"{result.get('error')}\n{log_tail()}"
        events = result["events"]
        assert events[-1] == b"[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] > 0
        assert result["done_at"] > signalled_at
        # nothing of the server's session outlives it (Ray's GCS, raylet, dashboard agent,
        # workers; all in the server's session)
        time.sleep(0.5)
        assert _session_members(proc.pid) == {}
        print(
            f"{how}: up in {up_s:.1f}s, stopped {stop_s:.1f}s after the signal; the request "
            f"in flight ended {result['done_at'] - signalled_at:.1f}s after it "
            f"({usage['completion_tokens']} tokens)"
        )
    finally:
        for pid in _session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
