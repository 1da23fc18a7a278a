"""A local stand-in for the few Kubeflow Pipelines v2beta1 REST endpoints tlpipe uses, recording
every request, so submit/list/schedule can be tested through the real kfp.Client."""

from __future__ import annotations

import json

from tests.fake_http import FakeApi

API = "/apis/v2beta1"


class FakeKfp(FakeApi):
    """The KFP API on 127.0.0.1 (see FakeApi for `url`, `requests`, `fail_with`)."""

    def __init__(self):
        super().__init__()
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring: dict[str, dict] = {}

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


def _filtered_name(query: dict) -> str | None:
    """The display_name an experiments listing filters on, if any."""
    for raw in query.get("filter", []):
        for predicate in json.loads(raw).get("predicates", []):
            if predicate.get("key") in ("display_name", "name"):
                return predicate.get("string_value") or predicate.get("stringValue")
    return None
