"""A fine-tuning job's life on the API server, for both engines: the TrainJob (Kubeflow Trainer
v2, trainjob.py) and the TFJob (Training Operator v1, tfjob.py), each described by a `JobKind`.

`run` creates the job that launch.py built from the engine module's `manifest`, waits for it,
surfaces the failing worker's reason and last log lines, and deletes it when done. Workers read
the step's inputs from their artifact URIs and the chief writes the model under `backup_root`
(gs://, or a path on a mounted ReadWriteMany volume), where every worker also keeps its backup:
a pod restarted after a lost node resumes from the last completed epoch.

The job is owned by the launcher pod (an ownerReference, from the downward API: Kubernetes
deletes the job and its workers when the step's pod goes, however it goes) and deleted by the
launcher on success, failure, time-out and SIGTERM (a cancelled run). The job's deadline is a few
minutes shorter than the step's, so the launcher is still there to report it. A retried step
waits until the previous attempt's job is really gone (Foreground deletion keeps it until its
pods are) before it creates the new one under the same name. The start time-out holds until
every worker pod is Running (the engines report Running once one is).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

from components.core.cluster import distribute, local as local_workers

log = logging.getLogger("tlpipe.cluster")

LOG_LINES = 40

DELETION_TIMEOUT_SECONDS = 600  # how long a previous attempt's job may take to go away


@dataclass(frozen=True)
class JobKind:
    """How one engine's job is addressed and read.

    kind, group, version, plural: the custom resource. pod_label: the label key whose value is
    the job's name on its worker pods. container: the worker container (for logs). succeeded,
    failed: the condition types that end the job. workers: the job's worker count, from its
    manifest. restarts: (custom objects API, name, namespace, restarts seen as conditions) ->
    worker-group restarts, read before the job is deleted."""

    kind: str
    group: str
    version: str
    plural: str
    pod_label: str
    container: str
    succeeded: str
    failed: str
    workers: Callable[[dict], int]
    restarts: Callable[..., int]


class JobFailure(distribute.WorkerFailure):
    """The job failed or timed out: names the worker pod, its reason and its last lines."""


class Terminated(Exception):
    """The launcher got SIGTERM (a cancelled run, or its pod's deadline) while a job ran."""


def run(kind: JobKind, job: dict, api_client=None, timeout_seconds: float = 0,
        start_timeout_seconds: float = local_workers.START_TIMEOUT_SECONDS,
        poll_seconds: float = 10) -> int:
    """Creates `job` (a `kind` manifest), waits until it succeeds, and deletes it whatever
    happens (SIGTERM included, in the main thread).

    A job of the same name left by an earlier attempt of the step is deleted first and waited
    for until it is gone (its workers' backups stay, so the new job resumes). Fails with
    JobFailure when the job fails, when its worker pods are not all Running within
    `start_timeout_seconds` (naming the ones that are not, and why), or when it has not finished
    within `timeout_seconds` (0: no limit). api_client: a kubernetes ApiClient (default: the
    in-cluster service account, else the kubeconfig). Returns the worker-group restarts.
    """
    from kubernetes import client as k8s

    api_client = api_client or _default_client()
    custom, core = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    with _terminated_on_sigterm(kind):
        try:  # a SIGTERM while the create is in flight still deletes what it made
            _create_replacing(kind, custom, job, poll_seconds)
            log.info("created %s %s/%s with %d workers", kind.kind, namespace, name,
                     kind.workers(job))
            return _wait(kind, custom, core, name, namespace, kind.workers(job),
                         timeout_seconds, start_timeout_seconds, poll_seconds)
        finally:
            _delete(kind, custom, name, namespace)
            log.info("deleted %s %s/%s", kind.kind, namespace, name)


@contextlib.contextmanager
def _terminated_on_sigterm(kind: JobKind):
    """Within the block, SIGTERM raises Terminated (so `finally` clauses run); outside the main
    thread, where Python cannot take signals, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"the launcher was sent SIGTERM (run cancelled or step deadline); "
                         f"its {kind.kind} is deleted")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _create_replacing(kind: JobKind, custom, job: dict, poll_seconds: float) -> None:
    """Deletes a job of the same name, waits until the API no longer has it (at most
    DELETION_TIMEOUT_SECONDS), then creates `job`; a 409 AlreadyExists (it came back, or
    another deletion was still running) waits again."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    deadline = time.monotonic() + DELETION_TIMEOUT_SECONDS
    while True:
        _delete(kind, custom, name, namespace)
        while _get(kind, custom, name, namespace) is not None:
            if time.monotonic() > deadline:
                raise JobFailure(
                    f"{kind.kind} {namespace}/{name} from an earlier attempt is still being "
                    f"deleted after {DELETION_TIMEOUT_SECONDS} s; look at its pods' finalizers "
                    f"(kubectl get pods -l {kind.pod_label}={name}) and retry")
            time.sleep(poll_seconds)
        try:
            custom.create_namespaced_custom_object(kind.group, kind.version, namespace,
                                                   kind.plural, job)
            return
        except ApiException as error:
            if error.status != 409:
                raise


def _get(kind: JobKind, custom, name: str, namespace: str) -> dict | None:
    """The job as the API has it, or None when there is none."""
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(kind.group, kind.version, namespace,
                                                   kind.plural, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _wait(kind: JobKind, custom, core, name: str, namespace: str, workers: int,
          timeout_seconds: float, start_timeout_seconds: float, poll_seconds: float) -> int:
    started, restarts, all_running, last = time.monotonic(), 0, False, None
    while True:
        status = (_get(kind, custom, name, namespace) or {}).get("status") or {}
        condition = current_condition(status)
        if condition != last:
            log.info("%s %s: %s", kind.kind, name, condition or "waiting for its controller")
            restarts += condition == "Restarting"
            last = condition
        if condition == kind.succeeded:
            return kind.restarts(custom, name, namespace, restarts)
        # the engines say Running as soon as one worker runs: wait for every worker pod
        all_running = all_running or _running_pods(kind, core, name, namespace) >= workers
        elapsed = time.monotonic() - started
        problem = None
        if condition == kind.failed:
            problem = f"{kind.kind} {name} failed: {_message(status, kind.failed)}"
        elif not all_running and elapsed > start_timeout_seconds:
            problem = (f"{kind.kind} {name} did not have all {workers} worker pods Running "
                       f"within {start_timeout_seconds:g} s "
                       f"({_running_pods(kind, core, name, namespace)} running)")
        elif timeout_seconds and elapsed > timeout_seconds:
            problem = f"{kind.kind} {name} did not finish within {timeout_seconds:g} s"
        if problem:
            raise JobFailure(f"{problem}\n{worker_report(kind, core, name, namespace)}")
        time.sleep(poll_seconds)


def _running_pods(kind: JobKind, core, name: str, namespace: str) -> int:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{kind.pod_label}={name}").items
    return sum(pod.status.phase in ("Running", "Succeeded") for pod in pods)


def current_condition(status: dict) -> str | None:
    """The type of the job's latest condition whose status is "True" (e.g. Created, Running,
    Restarting, Succeeded / Complete, Failed), or None before its controller has seen it."""
    true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    return true[-1]["type"] if true else None


def _message(status: dict, failed: str) -> str:
    found = [c for c in status.get("conditions") or [] if c.get("type") == failed]
    return (found[-1].get("message") or found[-1].get("reason") or "") if found else ""


def worker_report(kind: JobKind, core, name: str, namespace: str) -> str:
    """Why the job's worker pods are not well: each failing or pending pod with its phase,
    reason and exit code (a pending pod's scheduling reason), and the last LOG_LINES lines of
    the first failed one."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{kind.pod_label}={name}").items
    lines, logged = [], False
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        reason, exit_code = _pod_reason(pod)
        if pod.status.phase == "Succeeded" or (pod.status.phase == "Running" and not reason):
            continue
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase}"
                     + (f", {reason}" if reason else "")
                     + (f", exit code {exit_code}" if exit_code is not None else ""))
        if exit_code not in (None, 0) and not logged:
            text = core.read_namespaced_pod_log(pod.metadata.name, namespace,
                                                container=kind.container, tail_lines=LOG_LINES)
            lines.append(f"last lines of {pod.metadata.name}:\n{text.rstrip()}")
            logged = True
    return "\n".join(lines) or "no worker pod reported a problem"


def _pod_reason(pod) -> tuple[str, int | None]:
    """(reason, exit code) of a pod: a container that ended with an error, now or in its last
    run (a crash-looping container waits in CrashLoopBackOff with its exit code in
    last_state), or that waits; else an unschedulable condition."""
    for container in pod.status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        for state in (container.state, container.last_state):
            terminated = state.terminated if state else None
            if terminated is not None and terminated.exit_code:
                reason = waiting.reason if waiting is not None and waiting.reason else None
                return reason or terminated.reason or "Error", terminated.exit_code
        if waiting is not None:
            return waiting.reason or "Waiting", None
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{condition.reason}: {condition.message}", None
    return "", None


def _delete(kind: JobKind, custom, name: str, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural,
                                               name, propagation_policy="Foreground")
    except ApiException as error:
        if error.status != 404:
            raise


def _default_client():
    from kubernetes import client as k8s, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return k8s.ApiClient()


