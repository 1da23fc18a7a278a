"""A local stand-in for the few Kubernetes API endpoints the cluster launchers use (tfjobs of
kubeflow.org/v1 or trainjobs of trainer.kubeflow.org/v1alpha1, the TrainJob's JobSet, pods, pod
logs), driven by the test: it scripts the job's conditions and the pods, and reads back every
request.

Where it matters to the launcher it behaves like the real API server: a created job is
validated against the published CRD schema (422 Invalid otherwise); creating a name that still
exists answers 409 AlreadyExists; a Foreground deletion keeps the object, with its
deletionTimestamp set, for `deletion_seconds` (the real one keeps it until its pods are gone);
and unless the test gives its own pods, the job's worker pods follow its condition: Pending
until its controller has reported any condition, Running after.
"""

from __future__ import annotations

import time
import uuid

from tests import k8s_schema
from tests.fake_http import FakeApi

# per kind: the API path prefix of its namespaced collection, its schema, its worker count
KINDS = {
    "tfjob": ("/apis/kubeflow.org/v1/namespaces/", "tfjobs", k8s_schema.TFJOB,
              lambda job: job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"]),
    "trainjob": ("/apis/trainer.kubeflow.org/v1alpha1/namespaces/", "trainjobs",
                 k8s_schema.TRAINJOB, lambda job: job["spec"]["trainer"]["numNodes"])}



class FakeKubernetes(FakeApi):
    """The API on 127.0.0.1 (see FakeApi for `url` and `requests`). `conditions`: the TFJob's
    condition type per status read (the last one repeats; None: no status yet); `pods`: Pod
    objects (dicts) its pod listing returns, or a function of the fake returning them (default:
    the job's workers, Running once a condition Running was served); `logs`: pod name -> log
    text; `deletion_seconds`: how long a Foreground-deleted job stays; `kind`: "tfjob" or
    "trainjob"; `jobset_restarts`: the TrainJob's JobSet's status.restarts."""

    def __init__(self, conditions: list, pods=None, logs: dict[str, str] | None = None,
                 failure_message: str = "", deletion_seconds: float = 2.0,
                 kind: str = "tfjob", jobset_restarts: int = 0):
        super().__init__()
        self.kind, self.jobset_restarts = kind, jobset_restarts
        self.conditions, self.logs = list(conditions), logs or {}
        self.pods = pods if pods is not None else workers_following_the_job
        self.failure_message, self.deletion_seconds = failure_message, deletion_seconds
        self.jobs: dict[str, dict] = {}
        self.gone_at: dict[str, float] = {}  # name -> when a deleted job disappears
        self.served: list = []  # every condition served, in order

    def client(self):
        """A kubernetes ApiClient talking to this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def methods(self) -> list[str]:
        """'METHOD kind' of every request in order, kind being tfjob, trainjob, jobset, pods or
        log."""
        return [f"{r['method']} {_kind(r['path'])}" for r in self.requests]

    def live_jobs(self) -> dict[str, dict]:
        """The jobs that exist and are not being deleted."""
        self._collect()
        return {name: job for name, job in self.jobs.items() if name not in self.gone_at}

    def _collect(self) -> None:
        for name, when in list(self.gone_at.items()):
            if time.monotonic() >= when:
                self.jobs.pop(name, None)
                del self.gone_at[name]

    def _status(self) -> dict:
        condition = self.conditions.pop(0) if len(self.conditions) > 1 else self.conditions[0]
        self.served.append(condition)
        if condition is None:
            return {}
        entry = {"type": condition, "status": "True", "reason": f"Job{condition}",
                 "message": self.failure_message if condition == "Failed" else ""}
        return {"conditions": [{"type": "Created", "status": "True"}, entry]}

    def _answer(self, method: str, path: str, query: dict, body: dict):
        parts = path.strip("/").split("/")
        self._collect()
        prefix, plural, _, _ = KINDS[self.kind]
        if path.startswith("/apis/jobset.x-k8s.io/v1alpha2/namespaces/") and self.kind == \
                "trainjob" and parts[6] in self.live_jobs():
            return 200, {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                         "metadata": {"name": parts[6]},
                         "status": {"restarts": self.jobset_restarts}}
        if path.startswith(prefix) and parts[5] == plural:
            name = parts[6] if len(parts) > 6 else body.get("metadata", {}).get("name")
            if method == "POST":
                return self._create(name, body)
            if name not in self.jobs:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            if method == "DELETE":
                return self._delete(name, body, query)
            return 200, {**self.jobs[name], "status": self._status()}
        if path.startswith("/api/v1/namespaces/") and parts[4] == "pods":
            if len(parts) == 7 and parts[6] == "log":
                return 200, self.logs.get(parts[5], "")
            pods = self.pods(self) if callable(self.pods) else self.pods
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods}
        return 404, {"kind": "Status", "code": 404, "message": f"no route {method} {path}"}

    def _create(self, name: str, body: dict):
        found = k8s_schema.problems(body, *KINDS[self.kind][2])
        if found:
            return 422, _status(422, "Invalid", f'{body.get("kind")} "{name}" is invalid: '
                                                + "; ".join(found))
        if name in self.jobs:
            return 409, _status(409, "AlreadyExists", f'{KINDS[self.kind][1]} "{name}" '
                                                      f'already exists')
        self.jobs[name] = {**body, "metadata": {**body["metadata"], "uid": str(uuid.uuid4())}}
        return 201, self.jobs[name]

    def _delete(self, name: str, body: dict, query: dict):
        policy = body.get("propagationPolicy") or (query.get("propagationPolicy") or [""])[0]
        if policy == "Foreground":
            self.gone_at.setdefault(name, time.monotonic() + self.deletion_seconds)
            self.jobs[name]["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z"
            return 200, self.jobs[name]
        del self.jobs[name]
        return 200, _status(200, "Success", "")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Success" if code < 300 else "Failure",
            "reason": reason, "message": message, "code": code}


def _kind(path: str) -> str:
    for kind in ("tfjob", "trainjob", "jobset"):
        if f"/{kind}s" in path:
            return kind
    return "log" if path.endswith("/log") else "pods"


def workers_following_the_job(fake: FakeKubernetes) -> list[dict]:
    """The live job's worker pods: Running once its controller has reported a condition, else
    Pending."""
    jobs = fake.live_jobs()
    if not jobs:
        return []
    name, job = next(iter(jobs.items()))
    phase = "Running" if any(fake.served) else "Pending"
    return [pod(f"{name}-worker-{index}", phase) for index in range(KINDS[fake.kind][3](job))]


def pod(name: str, phase: str, exit_code: int | None = None, reason: str = "",
        unschedulable: str = "", crash_looping: bool = False) -> dict:
    """A worker Pod as the API returns it: terminated with `exit_code` (crash_looping: its
    last run did, and it now waits in CrashLoopBackOff to start again), or pending with an
    unschedulable message."""
    container = {"name": "tensorflow", "image": "img", "imageID": "", "ready": False,
                 "restartCount": 0, "state": {}}
    if exit_code is not None:
        ended = {"terminated": {"exitCode": exit_code, "reason": reason}}
        if crash_looping:
            container.update(restartCount=3, lastState=ended, state={"waiting": {
                "reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}})
        else:
            container["state"] = ended
    status = {"phase": phase, "containerStatuses": [container]}
    if unschedulable:
        status = {"phase": phase, "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": unschedulable}]}
    return {"metadata": {"name": name, "labels": {}}, "status": status}
