"""A local stand-in for the few Kubernetes API endpoints the TFJob launcher uses (tfjobs of
kubeflow.org/v1, pods, pod logs), driven by the test: it scripts the TFJob's conditions and the
pods, and reads back every request."""

from __future__ import annotations

from tests.fake_http import FakeApi

TFJOBS = "/apis/kubeflow.org/v1/namespaces/{namespace}/tfjobs"


class FakeKubernetes(FakeApi):
    """The API on 127.0.0.1 (see FakeApi for `url` and `requests`). `conditions`: the TFJob's
    condition type per status read (the last one repeats; None: no status yet); `pods`: Pod
    objects (dicts) its pod listing returns; `logs`: pod name -> log text."""

    def __init__(self, conditions: list, pods: list[dict] | None = None,
                 logs: dict[str, str] | None = None, failure_message: str = ""):
        super().__init__()
        self.conditions, self.pods, self.logs = list(conditions), pods or [], logs or {}
        self.failure_message = failure_message
        self.jobs: dict[str, dict] = {}

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
