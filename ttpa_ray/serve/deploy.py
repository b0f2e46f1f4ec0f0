"""Starting the app: on a local Ray (loopback) from the CLI, or as a Serve config file
for `serve run` / `serve deploy` on a cluster.

`run_blocking` (`ttpa-ray serve`) serves until SIGTERM or Ctrl-C (SIGINT), then drains:
new requests stop being routed, those in flight finish (up to `serve.drain_timeout_s`; a
second signal stops waiting), and Serve and the local Ray it started shut down. It exits
0 and leaves no Ray process behind.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ttpa_ray.config import ServeConfig

log = logging.getLogger("ttpa_ray")
APP_NAME = "ttpa"


def serve_config_file(cfg: ServeConfig) -> dict[str, Any]:
    """A Serve config (the `serve run` / `serve deploy` schema) running `build_app(cfg)`."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "ttpa_ray.serve.app:build_app",
                "args": cfg.model_dump(mode="json"),
            }
        ],
    }


def is_loopback(host: str) -> bool:
    """Whether `host` binds only this machine: 127.0.0.0/8, ::1 (also as `[::1]` or
    IPv4-mapped) or `localhost`. Anything else, `0.0.0.0` and `::` included, is reachable
    from the network."""
    name = host.strip().lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False  # another host name: it may resolve to any interface
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool((mapped or addr).is_loopback)


def warn_if_open(host: str, api_key: str | None) -> bool:
    """Log a warning when `host` is reachable from the network and no API key is set;
    returns whether it warned."""
    if api_key or is_loopback(host):
        return False
    log.warning(
        "serving on %s without an API key: the endpoint is open to anyone on the network. "
        "Set one with --api-key-env NAME (the key in environment variable NAME; "
        "serve.api_key_env in a config), or bind 127.0.0.1.",
        host,
    )
    return True


def lora_adapters(items: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """`--lora` values → adapters (name → dir) added to `base`: `NAME=DIR`, or a bare `DIR`
    named after itself. The one parser of the flag, for `ttpa-ray serve` and `jobs.serve`."""
    adapters = dict(base or {})
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item.rstrip("/")).name, item
        adapters[name] = path
    return adapters


def serve_settings(
    cfg: ServeConfig,
    updates: dict[str, Any] | None = None,
    lora: list[str] | None = None,
    run_dir: str | None = None,
    which: str = "ttpa",
) -> ServeConfig:
    """The `serve` section with a command line's settings, for `ttpa-ray serve` and
    `jobs.serve` alike: `updates` (field → value, None = not given), `--lora` items added
    to its adapters; no model given or configured → `run_dir/which/model` when a run dir
    is. Validated as the YAML is (a bad value: ValueError naming `serve.<field>`)."""
    from ttpa_ray.config import apply_overrides

    given = {k: v for k, v in (updates or {}).items() if v is not None}
    if lora:
        given["adapters"] = lora_adapters(lora, cfg.adapters)
    if not given.get("model", cfg.model) and run_dir:
        given["model"] = str(Path(run_dir) / which / "model")
    return apply_overrides(cfg, given, "serve")


def start_proxy(host: str, port: int, proxy_location: str | None = None) -> None:
    """Serve's HTTP proxy on `host:port` (on the running Ray). `proxy_location`: Serve's
    (`HeadOnly` when every client runs on the driver, as the pipeline's eval does)."""
    from ray import serve

    kw: dict[str, Any] = {"http_options": {"host": host, "port": port}}
    if proxy_location is not None:
        kw["proxy_location"] = proxy_location
    serve.start(**kw)


def deploy(
    cfg: ServeConfig, api_key: str | None = None, name: str = APP_NAME, route_prefix: str = "/"
) -> str:
    """Deploy `make_app(cfg)` as Serve app `name` at `route_prefix` on a started proxy;
    returns its base URL. The one way every caller (CLI, jobs, pipeline eval, benchmarks)
    puts the app up, so each gets the same warning for an open bind."""
    from ray import serve

    from ttpa_ray.serve.app import make_app, resolve_api_key

    key = resolve_api_key(cfg, api_key) if cfg.backend == "hf" else api_key
    warn_if_open(cfg.host, key)
    serve.run(make_app(cfg, api_key=key), name=name, route_prefix=route_prefix, blocking=False)
    url = f"http://{cfg.host}:{cfg.port}{route_prefix.rstrip('/')}/v1"
    log.info("serving %s at %s", cfg.resolved_model_id(), url)
    return url


def start(cfg: ServeConfig, api_key: str | None = None) -> str:
    """A local Ray (loopback), Serve's proxy on `cfg.host:cfg.port` and the app; returns
    its base URL."""
    from ttpa_ray.ray_utils import init_ray

    init_ray()
    start_proxy(cfg.host, cfg.port)
    return deploy(cfg, api_key)


class StopSignals:
    """SIGTERM and SIGINT set `stop` (a second one sets `hurry`) instead of raising.

    A handler only sets events: the main thread may be inside Ray or Serve calls, where a
    `KeyboardInterrupt` or `SystemExit` leaves a half-stopped cluster."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.received = self.received or signal.Signals(signum).name
        self.stop.set()

    def wait(self) -> None:
        while not self.stop.wait(1.0):  # a timeout keeps the main thread responsive
            pass


def run_blocking(cfg: ServeConfig, api_key: str | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C (SIGINT), then drain and stop (`stop_serving`).

    A signal during startup (model loading) stops the server once it is up. Our handlers
    go in again right after `ray.init`, which replaces SIGTERM's twice: in Python with a
    `sys.exit` raised wherever the main thread is, and in C with Ray's failure handler
    (abseil's), which logs "*** SIGTERM received", arms a 3 s alarm that calls `abort()`
    and then runs the Python one: any shutdown longer than 3 s ended in SIGABRT."""
    from ttpa_ray.ray_utils import init_ray

    signals = StopSignals()
    signals.install()
    try:
        init_ray()
        signals.install()
        url = start(cfg, api_key)
        if not signals.stop.is_set():
            print(f"serving {cfg.resolved_model_id()} at {url} (Ctrl-C stops)", flush=True)
            signals.wait()
        log.info(
            "%s: stopping; waiting up to %.0fs for requests in flight (again: stop now)",
            signals.received,
            cfg.drain_timeout_s,
        )
    finally:
        stop_serving(cfg.drain_timeout_s, signals.hurry)
        signals.restore()


def stop_serving(drain_timeout_s: float = 10.0, hurry: threading.Event | None = None) -> None:
    """Drain the app (`drain`), shut Serve down, then the local Ray (`shutdown_ray`).

    After a drain that timed out, Serve's own shutdown is skipped: it would wait for the
    replicas still busy (up to their `graceful_shutdown_timeout_s`, 20 s), and stopping
    Ray ends them anyway. A failing step is logged and the next one still runs."""
    import ray
    from ray import serve

    from ttpa_ray.ray_utils import shutdown_ray

    if ray.is_initialized():
        try:
            if drain(drain_timeout_s, hurry):
                serve.shutdown()
            elif hurry is not None and hurry.is_set():
                log.warning("second signal: stopping without waiting for requests in flight")
            else:
                log.warning(
                    "requests still in flight after %.0fs: stopping anyway", drain_timeout_s
                )
        except Exception:
            log.exception("Serve did not shut down cleanly; stopping Ray")
    left = shutdown_ray()
    if left:
        log.warning("ended %d Ray process(es) that outlived ray.shutdown(): %s", len(left), left)
    log.info("stopped")


def drain(timeout_s: float, hurry: threading.Event | None = None) -> bool:
    """Stop admitting and wait for the requests in flight; True once none are left.

    Deleting the app does both through Serve: the proxy drops its routes (a new request
    gets 404 at once), while each replica, stopping, keeps serving what it has in flight
    (streams included) and exits when that is done. The proxy stays up meanwhile to
    deliver the answers. This covers every replica and both backends, which polling one
    replica's `GET /stats` over HTTP would not."""
    from ray import serve

    serve.delete(APP_NAME, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while not (hurry and hurry.is_set()):
        if APP_NAME not in serve.status().applications:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return False
