"""What the deployment settings do to the compiled pipeline: each task's image, resources,
placement, secrets, retries and time-out, and the fine-tune step's distribution (how many
workers, launched how, with what pod).
"""

from __future__ import annotations

from dataclasses import replace

from components.core.cluster.distribution import LAUNCHERS, Distribution, WorkerPod
from components.core.errors import ConfigError
from pipelines.settings import MULTI_WORKER_STEP, Settings, StepSettings

# What the launcher pod learns about itself through the downward API: the job's owner reference
# (so Kubernetes deletes the workers with a cancelled or killed step) and the service account
# its workers default to.
LAUNCHER_POD_FIELDS = {"TLPIPE_POD_NAME": "metadata.name", "TLPIPE_POD_UID": "metadata.uid",
                       "TLPIPE_SERVICE_ACCOUNT": "spec.serviceAccountName"}

# What each worker pod of a cluster job takes from the fine-tune step's settings (the backup
# volume comes from the settings' top level).
WORKER_POD_FIELDS = tuple(name for name in WorkerPod.__dataclass_fields__
                          if name != "backup_volume")


def distribution(settings: Settings, launcher: str | None = None) -> Distribution:
    """The fine-tune step's distribution contract from the settings: the worker count, how
    they are launched ("local" processes, or a cluster job: None for steps.finetune.launcher,
    "trainjob" or "tfjob"), restarts and time-outs, and for a cluster job of 2+ workers the
    image, backup_root, namespace and what each worker pod gets (`WorkerPod`)."""
    launcher = launcher or settings.step(MULTI_WORKER_STEP).launcher
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={launcher!r}; use one of {LAUNCHERS}")
    step = settings.step(MULTI_WORKER_STEP)
    contract = Distribution(workers=step.workers, launcher=launcher,
                            restarts=step.worker_restarts,
                            start_timeout_seconds=step.worker_start_timeout_seconds,
                            timeout_seconds=step.timeout_seconds)
    if not contract.runs_a_cluster_job:
        return contract
    pod = WorkerPod(**{name: getattr(step, name) for name in WORKER_POD_FIELDS},
                    backup_volume=settings.backup_volume)
    return replace(contract, image=settings.image("tlpipe-train"),
                   backup_root=settings.backup_root, namespace=settings.job_namespace, pod=pod)



def launcher_step(step: StepSettings) -> StepSettings:
    """The fine-tune step's own pod when it launches a cluster job (TrainJob or TFJob): it only
    waits and copies the model, so the accelerators and their placement go to the workers."""
    return replace(step, gpus=0, node_selector={}, tolerations=[])


def prepare_launcher(task, settings: Settings) -> None:
    """Gives the launcher task's pod its own name, uid and service account as environment
    variables (LAUNCHER_POD_FIELDS, from the downward API), and mounts the backup volume, where
    the chief leaves the model, if there is one."""
    from kfp import kubernetes

    for variable, field_path in LAUNCHER_POD_FIELDS.items():
        kubernetes.use_field_path_as_env(task, variable, field_path)
    volume = settings.backup_volume
    if volume.claim_name:
        kubernetes.mount_pvc(task, pvc_name=volume.claim_name, mount_path=volume.mount_path)


def apply(task, step: StepSettings, image: str) -> None:
    """Sets `image` and everything in `step` on a KFP pipeline task."""
    from kfp import kubernetes

    task.set_container_image(image)
    task.set_caching_options(step.caching)
    for key, setter in (("cpu_request", task.set_cpu_request), ("cpu_limit", task.set_cpu_limit),
                        ("memory_request", task.set_memory_request),
                        ("memory_limit", task.set_memory_limit)):
        if getattr(step, key):
            setter(getattr(step, key))
    if step.gpus:
        task.set_accelerator_type(step.gpu_type).set_accelerator_limit(step.gpus)
    for key, value in step.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in step.tolerations:
        kubernetes.add_toleration(task, key=toleration.key or None,
                                  operator=toleration.operator,
                                  value=toleration.value or None,
                                  effect=toleration.effect or None)
    for secret in step.secrets:
        if secret.env:
            kubernetes.use_secret_as_env(task, secret_name=secret.name,
                                         secret_key_to_env=secret.env)
        else:
            kubernetes.use_secret_as_volume(task, secret_name=secret.name,
                                            mount_path=secret.mount_path)
    if step.retries:
        task.set_retry(num_retries=step.retries, backoff_duration=f"{step.backoff_seconds}s",
                       backoff_factor=step.backoff_factor,
                       backoff_max_duration=f"{step.max_backoff_seconds}s")
    if step.timeout_seconds:
        kubernetes.set_timeout(task, step.timeout_seconds)
