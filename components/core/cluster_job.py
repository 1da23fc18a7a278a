"""Multi-worker fine-tuning on a cluster: what the TrainJob (Kubeflow Trainer v2, trainjob.py)
and the TFJob (Training Operator v1, tfjob.py) launchers share.

The fine-tune step's pod builds the job from the launcher module's `manifest`, creates it, waits
for it, surfaces the failing worker's reason and last log lines, and deletes it when done.
Workers read the step's inputs from their artifact URIs and the chief writes the model under
`backup_root` (gs://, or a path on a mounted ReadWriteMany volume), where every worker also keeps
its backup: a pod restarted after a lost node resumes from the last completed epoch.

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
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

from components.core import distribute, storage

log = logging.getLogger("tlpipe.cluster")

LAUNCHERS = ("trainjob", "tfjob")  # the engines, by the module that builds their manifest
LOG_LINES = 40
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DELETION_TIMEOUT_SECONDS = 600  # how long a previous attempt's job may take to go away
LAUNCHER_MARGIN_SECONDS = 300  # the job's deadline is this much before the step's (or 10%)


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


def job_name(model_uri: str) -> str:
    """A job name derived from the step's output URI: unique per run and step, and the same
    when KFP retries the step, so a retried step finds its workers' backups again."""
    return "tlpipe-finetune-" + hashlib.sha256(model_uri.encode()).hexdigest()[:12]


def job_deadline(step_timeout_seconds: int) -> int:
    """The job's deadline in seconds for a step with that timeout (0: none): the step's less
    LAUNCHER_MARGIN_SECONDS, or less a tenth of it when that is shorter."""
    if not step_timeout_seconds:
        return 0
    return step_timeout_seconds - min(LAUNCHER_MARGIN_SECONDS, step_timeout_seconds // 10)


def launcher_pod() -> dict | None:
    """{"name", "uid", "service_account"} of the pod this runs in, from the downward-API
    variables the compiled pipeline sets (pipelines.settings.LAUNCHER_POD_FIELDS); None outside
    such a pod."""
    name, uid = os.environ.get("TLPIPE_POD_NAME"), os.environ.get("TLPIPE_POD_UID")
    if not (name and uid):
        return None
    return {"name": name, "uid": uid,
            "service_account": os.environ.get("TLPIPE_SERVICE_ACCOUNT", "")}


def owner_references(owner: dict | None) -> list | None:
    """The job's ownerReferences naming the launcher pod `owner` (see `launcher_pod`)."""
    from kubernetes import client as k8s

    if not owner:
        return None
    return [k8s.V1OwnerReference(api_version="v1", kind="Pod", name=owner["name"],
                                 uid=owner["uid"], block_owner_deletion=True)]


def worker_service_account(pod: dict, owner: dict | None) -> str | None:
    """The settings' worker_service_account, else the launcher pod's own, else None."""
    return pod.get("worker_service_account") or (owner or {}).get("service_account") or None


def resources(pod: dict) -> tuple[dict, dict]:
    """(requests, limits) of a worker pod from the step settings `pod`."""
    requests = {name: pod[f"{name}_request"] for name in ("cpu", "memory")
                if pod.get(f"{name}_request")}
    limits = {name: pod[f"{name}_limit"] for name in ("cpu", "memory") if pod.get(f"{name}_limit")}
    if pod.get("gpus"):
        limits[pod.get("gpu_type") or "nvidia.com/gpu"] = str(pod["gpus"])
    return requests, limits


def tolerations(pod: dict) -> list | None:
    """The worker pods' tolerations from the step settings `pod`."""
    from kubernetes import client as k8s

    return [k8s.V1Toleration(key=t.get("key") or None, operator=t.get("operator") or None,
                             value=t.get("value") or None, effect=t.get("effect") or None)
            for t in pod.get("tolerations", [])] or None


def volumes(pod: dict):
    """(env vars, volume mounts, volumes) of a worker pod: the Secrets given by name in the
    step settings (as env or files), and the backup volume's claim if there is one."""
    from kubernetes import client as k8s

    env, mounts, found = [], [], []
    for index, secret in enumerate(pod.get("secrets", [])):
        for key, variable in sorted(secret.get("env", {}).items()):
            env.append(k8s.V1EnvVar(name=variable, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=secret["name"], key=key))))
        if secret.get("mount_path"):
            volume = f"secret-{index}"
            found.append(k8s.V1Volume(name=volume, secret=k8s.V1SecretVolumeSource(
                secret_name=secret["name"])))
            mounts.append(k8s.V1VolumeMount(name=volume, mount_path=secret["mount_path"],
                                            read_only=True))
    claim = pod.get("backup_volume") or {}
    if claim.get("claim_name"):
        found.append(k8s.V1Volume(
            name="backups", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=claim["claim_name"])))
        mounts.append(k8s.V1VolumeMount(name="backups", mount_path=claim["mount_path"]))
    return env, mounts, found


def run(kind: JobKind, job: dict, api_client=None, timeout_seconds: float = 0,
        start_timeout_seconds: float = distribute.START_TIMEOUT_SECONDS,
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
    """(reason, exit code) of a pod: its terminated or waiting container, else an
    unschedulable condition."""
    for container in pod.status.container_statuses or []:
        state = container.state or container.last_state
        terminated = state.terminated if state else None
        if terminated is not None and terminated.exit_code:
            return terminated.reason or "Error", terminated.exit_code
        if state and state.waiting is not None:
            return state.waiting.reason or "Waiting", None
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


def own_namespace() -> str:
    """The namespace this pod runs in (its service account's), else "default"."""
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip()
    return "default"


def fine_tune(distribution: dict, uris: dict, config_json: str, model_dir: str,
              api_client=None, poll_seconds: float = 10) -> int:
    """The fine-tune step on a cluster: runs the workers as the job of distribution["launcher"]
    ("trainjob" or "tfjob"; the settings come from pipelines.settings.distribution), then copies
    the chief's model from backup_root into `model_dir`. uris: the step's artifact URIs
    {"images", "backbone", "head"} (read by the worker pods) and "model" (names the job).
    Returns the worker-group restarts."""
    from components.core import tfjob, trainjob

    launcher = {"tfjob": tfjob, "trainjob": trainjob}[distribution["launcher"]]
    root = distribution.get("backup_root", "")
    mounted = (distribution["pod"].get("backup_volume") or {}).get("mount_path", "")
    if not (storage.is_gcs(root) or mounted and inside(root, mounted)):
        raise ValueError("multi-worker fine-tuning on a cluster needs backup_root: "
                         "gs://BUCKET/PATH, or a path inside backup_volume.mount_path, in the "
                         "deployment settings")
    name = job_name(uris["model"])
    remote = f"{root.rstrip('/')}/{name}"
    command = distribute.worker_command(uris["images"], uris["backbone"], uris["head"],
                                        f"{remote}/model", config_json, f"{remote}/backups",
                                        python="python")
    deadline = job_deadline(distribution.get("timeout_seconds", 0))
    job = launcher.manifest(name, distribution.get("namespace") or own_namespace(),
                            distribution["image"], command, distribution["workers"],
                            distribution["pod"], distribution["restarts"], deadline,
                            launcher_pod())
    restarts = run(launcher.KIND, job, api_client, deadline,
                   distribution["start_timeout_seconds"], poll_seconds)
    with storage.atomic_dir(model_dir) as partial:
        if storage.is_gcs(remote):
            from components.core import sources

            sources.download_prefix(f"{remote}/model/", partial)
        else:  # the backup volume is mounted here too
            shutil.copytree(f"{remote}/model", partial, dirs_exist_ok=True)
    return restarts


def inside(path: str, folder: str) -> bool:
    """Whether absolute `path` is `folder` or below it."""
    return os.path.isabs(path) and os.path.commonpath(
        [os.path.normpath(path), os.path.normpath(folder)]) == os.path.normpath(folder)
