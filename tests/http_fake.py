"""A scripted JSON-over-HTTP server on 127.0.0.1 (stdlib, in a thread): the fake
OpenAI-compatible endpoints of the construct, sample and eval tests."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# respond(request body) -> (HTTP status, response JSON)
Responder = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


@contextlib.contextmanager
def json_server(respond: Responder) -> Iterator[dict[str, Any]]:
    """Serve POSTs with `respond`; yields {"url": "http://127.0.0.1:PORT/v1", "seen":
    [request bodies]}. Requests are answered concurrently (one thread each)."""
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
    try:
        yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}/v1", "seen": seen}
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
