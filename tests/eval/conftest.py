"""A scripted OpenAI-compatible server on 127.0.0.1 for the eval tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# respond(body) -> (HTTP status, response JSON)
Responder = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


@pytest.fixture
def fake_server() -> Iterator[Callable[[Responder], dict[str, Any]]]:
    """Start servers with `start(respond)` → {"url", "seen"}; all stopped at teardown."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(respond: Responder) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    seen.append(body)
                status, payload = respond(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        servers.append((httpd, thread))
        return {"url": f"http://127.0.0.1:{httpd.server_address[1]}/v1", "seen": seen}

    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
