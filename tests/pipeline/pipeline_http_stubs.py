"""Tiny HTTP servers on 127.0.0.1 standing in for the Kubernetes and Kubeflow APIs (their HTTP boundary only)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[str, str, bytes], tuple[int, Any]]


@contextmanager
def serve(route: Route) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """Serve ``route(method, path, body) -> (status, json body | bytes)``; yields (base URL, request log)."""
    calls: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            calls.append((self.command, self.path, body))
            status, payload = route(self.command, self.path, body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type",
                "application/json" if not isinstance(payload, bytes) else "application/octet-stream",
            )
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class SparkOperatorStub:
    """The CustomObjects endpoints of one SparkApplication whose state walks through ``states``."""

    def __init__(self, states: list[str], error_message: str = "", create_status: int = 201) -> None:
        self.states = list(states)
        self.error_message = error_message
        self.create_status = create_status
        self.created: dict[str, Any] | None = None
        self.deleted: list[str] = []

    def __call__(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        m = re.match(
            r"^/apis/sparkoperator\.k8s\.io/v1beta2/namespaces/([^/]+)/sparkapplications(?:/([^/?]+))?", path
        )
        if not m:
            return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
        name = m.group(2)
        if method == "POST" and name is None:
            if self.create_status != 201:
                return self.create_status, {
                    "kind": "Status",
                    "code": self.create_status,
                    "reason": "Forbidden",
                }
            self.created = json.loads(body)
            return 201, self.created
        if method == "GET" and name:
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            status: dict[str, Any] = {"applicationState": {"state": state}} if state else {}
            if state in ("FAILED", "SUBMISSION_FAILED") and self.error_message:
                status["applicationState"]["errorMessage"] = self.error_message
            return 200, {**(self.created or {}), "status": status}
        if method == "DELETE" and name:
            self.deleted.append(name)
            return 200, {"kind": "Status", "status": "Success"}
        return 405, {"kind": "Status", "code": 405}
