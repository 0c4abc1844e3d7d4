"""Tiny HTTP servers on 127.0.0.1 standing in for the Kubernetes and Kubeflow APIs (their HTTP boundary only)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

Route = Callable[[str, str, bytes], tuple[int, Any]]


@contextmanager
def serve(
    route: Route, headers: list[dict[str, str]] | None = None
) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """Serve ``route(method, path, body) -> (status, json body | bytes)``; yields (base URL, request log).

    ``headers``, when given, receives each request's headers (in the order of the log).
    """
    calls: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            calls.append((self.command, self.path, body))
            if headers is not None:
                headers.append(dict(self.headers))
            status, payload = route(self.command, self.path, body)
            if payload == "drop":  # a connection error: no answer at all
                self.close_connection = True
                return
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


#: What ``drop`` in a fault list does: close the connection without answering (a connection error).
DROP = "drop"


class SparkOperatorStub:
    """The CustomObjects endpoints of one SparkApplication whose state walks through ``states``, and its pods.

    Args:
        states: The ``applicationState.state`` each status read returns in turn (the last one repeats).
        error_message: ``errorMessage`` of a FAILED or SUBMISSION_FAILED state.
        create_status: HTTP status of every create (201: accepted).
        existing: Applications already there (a previous attempt's), by name: a create answers 409.
        faults: Per HTTP method, statuses (or :data:`DROP`) answered before the real handling, in turn.
        pods: Pods that can be read, by name: their uid.
        pod_logs: The logs of pods, by name.
    """

    def __init__(
        self,
        states: list[str],
        error_message: str = "",
        create_status: int = 201,
        existing: dict[str, dict[str, Any]] | None = None,
        faults: dict[str, list[int | str]] | None = None,
        pods: dict[str, str] | None = None,
        pod_logs: dict[str, str] | None = None,
    ) -> None:
        self.states = list(states)
        self.error_message = error_message
        self.create_status = create_status
        self.existing = dict(existing or {})
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.pods = dict(pods or {})
        self.pod_logs = dict(pod_logs or {})
        self.created: dict[str, Any] | None = None
        self.creates: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.patches: list[dict[str, Any]] = []

    def __call__(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        pending = self.faults.get(method)
        if pending:
            fault = pending.pop(0)
            if fault == DROP:
                return 0, DROP
            return int(fault), {"kind": "Status", "code": fault, "reason": "Transient"}
        pod = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)(/log)?(?:\?(.*))?$", path)
        if pod and method == "GET":
            name, is_log, query = pod.group(2), pod.group(3), dict(parse_qsl(pod.group(4) or ""))
            if is_log:
                if name not in self.pod_logs:
                    return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
                lines = self.pod_logs[name].splitlines(keepends=True)
                tail = int(query.get("tailLines", len(lines)))
                return 200, "".join(lines[-tail:]).encode()
            if name not in self.pods:
                return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
            return 200, {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {"name": name, "uid": self.pods[name]},
            }
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
            manifest = json.loads(body)
            if manifest["metadata"]["name"] in self.existing:
                return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
            self.created = manifest
            self.creates.append(manifest)
            return 201, self.created
        if method == "GET" and name:
            if name in self.existing:
                return 200, self.existing[name]
            if self.created is None:
                return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            status: dict[str, Any] = {"applicationState": {"state": state}} if state else {}
            if state in ("FAILED", "SUBMISSION_FAILED") and self.error_message:
                status["applicationState"]["errorMessage"] = self.error_message
            return 200, {**(self.created or {}), "status": status}
        if method == "PATCH" and name:
            patch = json.loads(body)
            self.patches.append(patch)
            if name in self.existing:
                self.existing[name]["metadata"].update(patch["metadata"])
                self.created = self.existing.pop(name)  # from now on it is the application being polled
            return 200, self.created
        if method == "DELETE" and name:
            self.deleted.append(name)
            self.existing.pop(name, None)
            return 200, {"kind": "Status", "status": "Success"}
        return 405, {"kind": "Status", "code": 405}
