"""What a cluster job borrows from the launcher's own pod (read through the downward API
and the API server): owner reference, service account, resources, tolerations, volumes.
"""

from __future__ import annotations

import os

from components.core.cluster.distribution import WorkerPod

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def launcher_pod() -> dict | None:
    """{"name", "uid", "service_account"} of the pod this runs in, from the downward-API
    variables the compiled pipeline sets (pipelines.deploy.LAUNCHER_POD_FIELDS); None outside
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


def worker_service_account(pod: WorkerPod, owner: dict | None) -> str | None:
    """The settings' worker_service_account, else the launcher pod's own, else None."""
    return pod.worker_service_account or (owner or {}).get("service_account") or None


def resources(pod: WorkerPod) -> tuple[dict, dict]:
    """(requests, limits) of a worker pod: its set CPU and memory quantities, and its GPUs."""
    requests = {name: value for name, value in (("cpu", pod.cpu_request),
                                                ("memory", pod.memory_request)) if value}
    limits = {name: value for name, value in (("cpu", pod.cpu_limit),
                                              ("memory", pod.memory_limit)) if value}
    if pod.gpus:
        limits[pod.gpu_type or "nvidia.com/gpu"] = str(pod.gpus)
    return requests, limits


def tolerations(pod: WorkerPod) -> list | None:
    """The worker pods' tolerations (None for none)."""
    from kubernetes import client as k8s

    return [k8s.V1Toleration(key=t.key or None, operator=t.operator or None,
                             value=t.value or None, effect=t.effect or None)
            for t in pod.tolerations] or None


def volumes(pod: WorkerPod):
    """(env vars, volume mounts, volumes) of a worker pod: the Secrets given by name in the
    step settings (as env or files), and the backup volume's claim if there is one."""
    from kubernetes import client as k8s

    env, mounts, found = [], [], []
    for index, secret in enumerate(pod.secrets):
        for key, variable in sorted(secret.env.items()):
            env.append(k8s.V1EnvVar(name=variable, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=secret.name, key=key))))
        if secret.mount_path:
            volume = f"secret-{index}"
            found.append(k8s.V1Volume(name=volume, secret=k8s.V1SecretVolumeSource(
                secret_name=secret.name)))
            mounts.append(k8s.V1VolumeMount(name=volume, mount_path=secret.mount_path,
                                            read_only=True))
    claim = pod.backup_volume
    if claim.claim_name:
        found.append(k8s.V1Volume(
            name="backups", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=claim.claim_name)))
        mounts.append(k8s.V1VolumeMount(name="backups", mount_path=claim.mount_path))
    return env, mounts, found


def own_namespace() -> str:
    """The namespace this pod runs in (its service account's), else "default"."""
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip()
    return "default"
