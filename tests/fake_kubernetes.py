"""A local stand-in for the few Kubernetes API endpoints the TFJob launcher uses (tfjobs of
kubeflow.org/v1, pods, pod logs), driven by the test: it scripts the TFJob's conditions and the
pods, and reads back every request."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TFJOBS = "/apis/kubeflow.org/v1/namespaces/{namespace}/tfjobs"


class FakeKubernetes:
    """Started on 127.0.0.1 with a free port (`url`). `conditions`: the TFJob's condition type
    per status read (the last one repeats); `pods`: Pod objects (dicts) its pod listing returns;
    `logs`: pod name -> log text. `requests`: {"method", "path", "query", "body"} received."""

    def __init__(self, conditions: list[str], pods: list[dict] | None = None,
                 logs: dict[str, str] | None = None, failure_message: str = ""):
        self.conditions, self.pods, self.logs = list(conditions), pods or [], logs or {}
        self.failure_message = failure_message
        self.jobs: dict[str, dict] = {}
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def client(self):
        """A kubernetes ApiClient talking to this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def methods(self) -> list[str]:
        """'METHOD kind' of every request in order, kind being tfjob, pods or log."""
        return [f"{r['method']} {_kind(r['path'])}" for r in self.requests]

    def _status(self) -> dict:
        condition = self.conditions.pop(0) if len(self.conditions) > 1 else self.conditions[0]
        if condition is None:
            return {}
        entry = {"type": condition, "status": "True", "reason": f"TFJob{condition}",
                 "message": self.failure_message if condition == "Failed" else ""}
        return {"conditions": [{"type": "Created", "status": "True"}, entry]}

    def _answer(self, method: str, path: str, query: dict, body: dict):
        parts = path.strip("/").split("/")
        if path.startswith("/apis/kubeflow.org/v1/namespaces/") and parts[5] == "tfjobs":
            name = parts[6] if len(parts) > 6 else body.get("metadata", {}).get("name")
            if method == "POST":
                self.jobs[name] = body
                return 201, body
            if name not in self.jobs:
                return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound",
                             "code": 404}
            if method == "DELETE":
                del self.jobs[name]
                return 200, {"kind": "Status", "status": "Success"}
            return 200, {**self.jobs[name], "status": self._status()}
        if path.startswith("/api/v1/namespaces/") and parts[4] == "pods":
            if len(parts) == 7 and parts[6] == "log":
                return 200, self.logs.get(parts[5], "")
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                         "items": self.pods}
        return 404, {"kind": "Status", "code": 404, "message": f"no route {method} {path}"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                parsed = urllib.parse.urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = urllib.parse.parse_qs(parsed.query)
                fake.requests.append({"method": method, "path": parsed.path, "query": query,
                                      "body": body})
                status, answer = fake._answer(method, parsed.path, query, body)
                text = isinstance(answer, str)
                payload = answer.encode() if text else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

            def log_message(self, *args):
                pass

        return Handler


def _kind(path: str) -> str:
    if "/tfjobs" in path:
        return "tfjob"
    return "log" if path.endswith("/log") else "pods"


def pod(name: str, phase: str, exit_code: int | None = None, reason: str = "",
        unschedulable: str = "") -> dict:
    """A worker Pod as the API returns it: terminated with `exit_code`, or pending with an
    unschedulable message."""
    container = {"name": "tensorflow", "image": "img", "imageID": "", "ready": False,
                 "restartCount": 0, "state": {}}
    if exit_code is not None:
        container["state"] = {"terminated": {"exitCode": exit_code, "reason": reason}}
    status = {"phase": phase, "containerStatuses": [container]}
    if unschedulable:
        status = {"phase": phase, "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": unschedulable}]}
    return {"metadata": {"name": name, "labels": {}}, "status": status}
