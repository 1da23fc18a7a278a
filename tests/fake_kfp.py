"""A local stand-in for the few Kubeflow Pipelines v2beta1 REST endpoints tlpipe uses, recording
every request, so submit/list/schedule can be tested through the real kfp.Client."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/apis/v2beta1"


class FakeKfp:
    """Started on 127.0.0.1 with a free port; `url` is its host, `requests` what it received as
    dicts {"method", "path", "query", "body", "authorization"}."""

    def __init__(self):
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring: dict[str, dict] = {}
        self.fail_with: int | None = None  # answer every request with this HTTP status
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def received(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == API + path]

    def _answer(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        route = path[len(API):]
        if route == "/healthz":
            return 200, {"multi_user": False}
        if route == "/experiments" and method == "GET":
            wanted = _filtered_name(query)
            found = [e for e in self.experiments.values()
                     if wanted is None or e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if route == "/experiments" and method == "POST":
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if route == "/runs" and method == "POST":
            run = {**body, "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING",
                   "created_at": "2026-11-23T10:00:00Z"}
            self.runs.append(run)
            return 200, run
        if route == "/runs" and method == "GET":
            return 200, {"runs": self.runs[::-1], "total_size": len(self.runs)}
        if route == "/recurringruns" and method == "POST":
            job = {**body, "recurring_run_id": f"job-{len(self.recurring) + 1}",
                   "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"}
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if route == "/recurringruns" and method == "GET":
            jobs = list(self.recurring.values())
            return 200, {"recurringRuns": jobs, "total_size": len(jobs)}
        if route.startswith("/recurringruns/") and route.endswith(":disable"):
            job_id = route[len("/recurringruns/"):-len(":disable")]
            if job_id not in self.recurring:
                return 404, {"error": f"recurring run {job_id} not found", "code": 5}
            self.recurring[job_id]["status"] = "DISABLED"
            return 200, {}
        return 404, {"error": f"no route {method} {path}"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                parsed = urllib.parse.urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = urllib.parse.parse_qs(parsed.query)
                fake.requests.append({"method": method, "path": parsed.path, "query": query,
                                      "body": body,
                                      "authorization": self.headers.get("Authorization")})
                status, answer = ((fake.fail_with, {"error": "refused"}) if fake.fail_with
                                  else fake._answer(method, parsed.path, query, body))
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *args):
                pass

        return Handler


def _filtered_name(query: dict) -> str | None:
    """The display_name an experiments listing filters on, if any."""
    for raw in query.get("filter", []):
        for predicate in json.loads(raw).get("predicates", []):
            if predicate.get("key") in ("display_name", "name"):
                return predicate.get("string_value") or predicate.get("stringValue")
    return None
