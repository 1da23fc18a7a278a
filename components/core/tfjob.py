"""Multi-worker fine-tuning on a cluster as a Kubeflow Training Operator TFJob (kubeflow.org/v1).

The fine-tune step's pod builds the TFJob (typed models from the `kubeflow-training` SDK and the
Kubernetes client, serialised to the API's JSON), creates it, waits for it, surfaces the failing
worker's reason and last log lines, and deletes it when done. Workers read the step's inputs from
their artifact URIs and the chief writes the model under `backup_root` (gs://), where every worker
also keeps its backup: a pod restarted after a lost node resumes from the last completed epoch.

The job is owned by the launcher pod (an ownerReference, from the downward API: Kubernetes
deletes the job and its workers when the step's pod goes, however it goes) and deleted by the
launcher on success, failure, time-out and SIGTERM (a cancelled run). The job's deadline is a few
minutes shorter than the step's, so the launcher is still there to report it. A retried step
waits until the previous attempt's job is really gone (Foreground deletion keeps it until its
pods are) before it creates the new one under the same name.

The cluster needs the Training Operator (which sets each worker's TF_CONFIG), and the service
account the pipeline's pods run as needs create/get/delete on tfjobs.kubeflow.org and get/list on
pods and pods/log in the namespace (images/k8s/tfjob-rbac.yaml; README: "Multi-worker
fine-tuning").
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
import time

from components.core import distribute, storage

log = logging.getLogger("tlpipe.tfjob")

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER = "tensorflow"  # the container name the Training Operator expects
JOB_LABEL = "training.kubeflow.org/job-name"  # the label the operator puts on its pods
LOG_LINES = 40
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DELETION_TIMEOUT_SECONDS = 600  # how long a previous attempt's job may take to go away
LAUNCHER_MARGIN_SECONDS = 300  # the job's deadline is this much before the step's (or 10%)


def job_name(model_uri: str) -> str:
    """A TFJob name derived from the step's output URI: unique per run and step, and the same
    when KFP retries the step, so a retried step finds its workers' backups again."""
    return "tlpipe-finetune-" + hashlib.sha256(model_uri.encode()).hexdigest()[:12]


def job_deadline(step_timeout_seconds: int) -> int:
    """The job's activeDeadlineSeconds for a step with that timeout (0: none): the step's less
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


def manifest(name: str, namespace: str, image: str, command: list[str], workers: int,
             pod: dict, restarts: int, timeout_seconds: int = 0,
             owner: dict | None = None) -> dict:
    """The TFJob as the JSON the Kubernetes API takes.

    workers: Worker replicas (>= 2; worker 0 is the chief). pod: what every worker pod gets,
    keys of pipelines.settings.WORKER_POD_KEYS (cpu/memory requests and limits, gpus of
    gpu_type, node_selector, tolerations, secrets as env or volumes, the service account).
    restarts: the job's backoffLimit: pod restarts (restartPolicy OnFailure: the survivors of a
    lost worker fail their collectives and restart too) before the job fails. timeout_seconds:
    the job's activeDeadlineSeconds (0: none). owner: the launcher pod (see `launcher_pod`):
    the job's owner, and its service account the workers' when the settings name none.
    """
    from kubeflow.training import models as kf
    from kubernetes import client as k8s

    requests, limits = _resources(pod)
    env, mounts, volumes = _secrets(pod.get("secrets", []))
    container = k8s.V1Container(
        name=CONTAINER, image=image, command=command, env=env or None, volume_mounts=mounts or None,
        resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None))
    account = pod.get("worker_service_account") or (owner or {}).get("service_account")
    template = k8s.V1PodTemplateSpec(
        # a service-mesh sidecar would keep a finished worker's pod running
        metadata=k8s.V1ObjectMeta(annotations={"sidecar.istio.io/inject": "false"}),
        spec=k8s.V1PodSpec(
            containers=[container], service_account_name=account or None,
            node_selector=pod.get("node_selector") or None,
            volumes=volumes or None, tolerations=[
                k8s.V1Toleration(key=t.get("key") or None, operator=t.get("operator") or None,
                                 value=t.get("value") or None, effect=t.get("effect") or None)
                for t in pod.get("tolerations", [])] or None))
    job = kf.KubeflowOrgV1TFJob(
        api_version=f"{GROUP}/{VERSION}", kind="TFJob",
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "tlpipe"},
            owner_references=[k8s.V1OwnerReference(
                api_version="v1", kind="Pod", name=owner["name"], uid=owner["uid"],
                block_owner_deletion=True)] if owner else None),
        spec=kf.KubeflowOrgV1TFJobSpec(
            run_policy=kf.KubeflowOrgV1RunPolicy(
                # when the job ends, pods still running go; failed ones stay for their logs
                backoff_limit=restarts, clean_pod_policy="Running",
                active_deadline_seconds=timeout_seconds or None),
            tf_replica_specs={"Worker": kf.KubeflowOrgV1ReplicaSpec(
                replicas=workers, restart_policy="OnFailure", template=template)}))
    return k8s.ApiClient().sanitize_for_serialization(job)


def _resources(pod: dict) -> tuple[dict, dict]:
    requests = {name: pod[f"{name}_request"] for name in ("cpu", "memory")
                if pod.get(f"{name}_request")}
    limits = {name: pod[f"{name}_limit"] for name in ("cpu", "memory") if pod.get(f"{name}_limit")}
    if pod.get("gpus"):
        limits[pod.get("gpu_type") or "nvidia.com/gpu"] = str(pod["gpus"])
    return requests, limits


def _secrets(secrets: list[dict]):
    """(env vars, volume mounts, volumes) for Secrets given by name, as in the step settings."""
    from kubernetes import client as k8s

    env, mounts, volumes = [], [], []
    for index, secret in enumerate(secrets):
        for key, variable in sorted(secret.get("env", {}).items()):
            env.append(k8s.V1EnvVar(name=variable, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=secret["name"], key=key))))
        if secret.get("mount_path"):
            volume = f"secret-{index}"
            volumes.append(k8s.V1Volume(name=volume, secret=k8s.V1SecretVolumeSource(
                secret_name=secret["name"])))
            mounts.append(k8s.V1VolumeMount(name=volume, mount_path=secret["mount_path"],
                                            read_only=True))
    return env, mounts, volumes


class TFJobFailure(distribute.WorkerFailure):
    """The TFJob failed or timed out: names the worker pod, its reason and its last lines."""


class Terminated(Exception):
    """The launcher got SIGTERM (a cancelled run, or its pod's deadline) while a job ran."""


def run(job: dict, api_client=None, timeout_seconds: float = 0,
        start_timeout_seconds: float = distribute.START_TIMEOUT_SECONDS,
        poll_seconds: float = 10) -> int:
    """Creates `job` (a `manifest`), waits until it succeeds, and deletes it whatever happens
    (SIGTERM included, in the main thread).

    A job of the same name left by an earlier attempt of the step is deleted first and waited
    for until it is gone (its workers' backups stay, so the new job resumes). Fails with
    TFJobFailure when the job fails, when its worker pods are not all Running within
    `start_timeout_seconds` (naming the ones that are not, and why), or when it has not finished
    within `timeout_seconds` (0: no limit). api_client: a kubernetes ApiClient (default: the
    in-cluster service account, else the kubeconfig). Returns the worker restarts seen.
    """
    from kubernetes import client as k8s

    api_client = api_client or _default_client()
    custom, core = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    workers = job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"]
    with _terminated_on_sigterm():
        _create_replacing(custom, job, poll_seconds)
        log.info("created TFJob %s/%s with %d workers", namespace, name, workers)
        try:
            return _wait(custom, core, name, namespace, workers, timeout_seconds,
                         start_timeout_seconds, poll_seconds)
        finally:
            _delete(custom, name, namespace)
            log.info("deleted TFJob %s/%s", namespace, name)


@contextlib.contextmanager
def _terminated_on_sigterm():
    """Within the block, SIGTERM raises Terminated (so `finally` clauses run); outside the main
    thread, where Python cannot take signals, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated("the launcher was sent SIGTERM (run cancelled or step deadline); "
                         "its TFJob is deleted")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _create_replacing(custom, job: dict, poll_seconds: float) -> None:
    """Deletes a job of the same name, waits until the API no longer has it (at most
    DELETION_TIMEOUT_SECONDS), then creates `job`; a 409 AlreadyExists (it came back, or
    another deletion was still running) waits again."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    deadline = time.monotonic() + DELETION_TIMEOUT_SECONDS
    while True:
        _delete(custom, name, namespace)
        while _exists(custom, name, namespace):
            if time.monotonic() > deadline:
                raise TFJobFailure(
                    f"TFJob {namespace}/{name} from an earlier attempt is still being deleted "
                    f"after {DELETION_TIMEOUT_SECONDS} s; look at its pods' finalizers "
                    f"(kubectl get pods -l {JOB_LABEL}={name}) and retry")
            time.sleep(poll_seconds)
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
            return
        except ApiException as error:
            if error.status != 409:
                raise


def _exists(custom, name: str, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _wait(custom, core, name: str, namespace: str, workers: int, timeout_seconds: float,
          start_timeout_seconds: float, poll_seconds: float) -> int:
    started, restarts, all_running, last = time.monotonic(), 0, False, None
    while True:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                     name).get("status") or {}
        condition = current_condition(status)
        if condition != last:
            log.info("TFJob %s: %s", name, condition or "waiting for the operator")
            restarts += condition == "Restarting"
            last = condition
        if condition == "Succeeded":
            return restarts
        # the operator says Running as soon as one worker runs: wait for every worker pod
        all_running = all_running or _running_pods(core, name, namespace) >= workers
        elapsed = time.monotonic() - started
        problem = None
        if condition == "Failed":
            problem = f"TFJob {name} failed: {_message(status)}"
        elif not all_running and elapsed > start_timeout_seconds:
            problem = (f"TFJob {name} did not have all {workers} worker pods Running within "
                       f"{start_timeout_seconds:g} s ({_running_pods(core, name, namespace)} "
                       f"running)")
        elif timeout_seconds and elapsed > timeout_seconds:
            problem = f"TFJob {name} did not finish within {timeout_seconds:g} s"
        if problem:
            raise TFJobFailure(f"{problem}\n{worker_report(core, name, namespace)}")
        time.sleep(poll_seconds)


def _running_pods(core, name: str, namespace: str) -> int:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name}").items
    return sum(pod.status.phase in ("Running", "Succeeded") for pod in pods)


def current_condition(status: dict) -> str | None:
    """The type of the TFJob's latest condition whose status is "True" (Created, Running,
    Restarting, Succeeded, Failed), or None before the operator has seen it."""
    true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    return true[-1]["type"] if true else None


def _message(status: dict) -> str:
    failed = [c for c in status.get("conditions") or [] if c.get("type") == "Failed"]
    return (failed[-1].get("message") or failed[-1].get("reason") or "") if failed else ""


def worker_report(core, name: str, namespace: str) -> str:
    """Why the job's worker pods are not well: each failing or pending pod with its phase,
    reason and exit code (a pending pod's scheduling reason), and the last LOG_LINES lines of
    the first failed one."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name}").items
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
                                                container=CONTAINER, tail_lines=LOG_LINES)
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


def _delete(custom, name: str, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                               propagation_policy="Foreground")
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
    """The fine-tune step on a cluster: runs the workers as a TFJob (see `manifest`; the
    settings in `distribution` come from pipelines.settings.distribution), then copies the
    chief's model from backup_root into `model_dir`. uris: the step's artifact URIs
    {"images", "backbone", "head"} (read by the worker pods) and "model" (names the job).
    Returns the worker restarts seen."""
    from components.core import sources, stages

    if not storage.is_gcs(distribution.get("backup_root", "")):
        raise ValueError("multi-worker fine-tuning on a cluster needs backup_root: "
                         "gs://BUCKET/PATH in the deployment settings")
    name = job_name(uris["model"])
    remote = f"{distribution['backup_root'].rstrip('/')}/{name}"
    command = stages.worker_command(uris["images"], uris["backbone"], uris["head"],
                                    f"{remote}/model", config_json,
                                    f"{remote}/backups", python="python")
    deadline = job_deadline(distribution.get("timeout_seconds", 0))
    job = manifest(name, distribution.get("namespace") or own_namespace(), distribution["image"],
                   command, distribution["workers"], distribution["pod"],
                   distribution["restarts"], deadline, launcher_pod())
    restarts = run(job, api_client, deadline, distribution["start_timeout_seconds"],
                   poll_seconds)
    with storage.atomic_dir(model_dir) as partial:
        sources.download_prefix(f"{remote}/model/", partial)
    return restarts
