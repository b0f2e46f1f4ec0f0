"""Starting the app: on a local Ray (loopback) from the CLI, or as a Serve config file
for `serve run` / `serve deploy` on a cluster."""

from __future__ import annotations

import logging
import time
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


def start(cfg: ServeConfig, api_key: str | None = None, blocking: bool = False) -> str:
    """Start Serve's proxy on `cfg.host:cfg.port` and deploy the app; returns its base URL."""
    from ray import serve

    from ttpa_ray.ray_utils import init_ray
    from ttpa_ray.serve.app import make_app

    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(make_app(cfg, api_key=api_key), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{cfg.host}:{cfg.port}/v1"
    log.info("serving %s at %s", cfg.resolved_model_id(), url)
    return url


def run_blocking(cfg: ServeConfig, api_key: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C), then shut Serve down."""
    from ray import serve

    url = start(cfg, api_key)
    print(f"serving {cfg.resolved_model_id()} at {url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
