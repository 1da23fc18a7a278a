"""Multi-worker fine-tuning as a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1):
the maintained engine, with JobSet underneath.

Trainer v2 ships no TensorFlow runtime; tlpipe ships one, images/k8s/tlpipe-tensorflow-runtime.yaml:
a ClusterTrainingRuntime `tlpipe-tensorflow` on the plain ML policy (numNodes only, no framework
plugin), one replicated job `node` of Indexed pods, a headless service per JobSet (JobSet's DNS
hostnames), and JobSet's failurePolicy restarting the whole group after a lost worker (it resumes
from the backups). `manifest` builds the TrainJob that references it, with the typed models of
`kubeflow-trainer-api`; job.py creates, watches and deletes it.

The TF_CONFIG contract (`tf_config_from_jobset`, called by components/worker.py when TF_CONFIG
is unset). Every worker pod has, from the runtime (downward API on JobSet's pod labels) and the
TrainJob:
    TLPIPE_JOBSET_NAME     the JobSet's name (= the TrainJob's), also the pods' DNS subdomain
    TLPIPE_REPLICATED_JOB  the replicated job's name ("node")
    TLPIPE_JOB_INDEX       the index of the pod's Job in that replicated job ("0")
    JOB_COMPLETION_INDEX   the pod's index in its Indexed Job, 0..N-1 (set by Kubernetes)
    TLPIPE_NUM_WORKERS     N, the TrainJob's numNodes (set by the TrainJob's trainer.env)
    TLPIPE_WORKER_PORT     the port every worker listens on (default 2222)
Pod i's stable name is <jobset>-<replicated job>-<job index>-<i>.<jobset> (an Indexed Job pod's
hostname on JobSet's headless service), so TF_CONFIG is {"cluster": {"worker": [those N
addresses with the port]}, "task": {"type": "worker", "index": JOB_COMPLETION_INDEX}}; worker 0
is the chief.
"""

from __future__ import annotations

import json
from typing import Mapping

from components.core.cluster import job as cluster_job, pod as own_pod
from components.core.cluster.distribution import WorkerPod

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"

RUNTIME = "tlpipe-tensorflow"  # the ClusterTrainingRuntime in images/k8s/

CONTAINER = "node"  # the runtime's trainer container

REPLICATED_JOB = "node"

JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # JobSet's label on its pods

WORKER_PORT = 2222

PATCH_MANAGER = "tlpipe.dev/launcher"


def tf_config_from_jobset(env: Mapping[str, str]) -> str:
    """TF_CONFIG (JSON) for this worker from the contract's environment variables (see the
    module docstring); ValueError naming the first one missing or malformed."""
    def read(name: str) -> str:
        if not env.get(name):
            raise ValueError(f"{name} is not set: this pod was not started by the "
                             f"{RUNTIME} runtime's TrainJob (or set TF_CONFIG yourself)")
        return env[name]

    jobset, replicated, job_index = (read("TLPIPE_JOBSET_NAME"), read("TLPIPE_REPLICATED_JOB"),
                                     read("TLPIPE_JOB_INDEX"))
    workers, index = int(read("TLPIPE_NUM_WORKERS")), int(read("JOB_COMPLETION_INDEX"))
    port = int(env.get("TLPIPE_WORKER_PORT") or WORKER_PORT)
    if not 0 <= index < workers:
        raise ValueError(f"JOB_COMPLETION_INDEX={index} is outside 0..{workers - 1} "
                         f"(TLPIPE_NUM_WORKERS={workers})")
    hosts = [f"{jobset}-{replicated}-{job_index}-{i}.{jobset}:{port}" for i in range(workers)]
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def manifest(name: str, namespace: str, image: str, command: list[str], workers: int,
             pod: WorkerPod, restarts: int, timeout_seconds: int = 0,
             owner: dict | None = None) -> dict:
    """The TrainJob as the JSON the Kubernetes API takes, on the `RUNTIME` ClusterTrainingRuntime.

    workers: numNodes (>= 2; worker 0 is the chief). pod: what every worker pod gets
    (`WorkerPod`: resources and GPUs as resourcesPerNode; node selector, tolerations, service
    account, secret and backup volumes as a runtime patch; secrets as env in trainer.env).
    restarts: not set per job; the runtime's JobSet failurePolicy.maxRestarts governs (kept
    for the launchers' common signature). timeout_seconds: activeDeadlineSeconds
    (0: none). owner: the launcher pod (`own_pod.launcher_pod`): the job's owner, and its
    service account the workers' when the settings name none.
    """
    from kubeflow_trainer_api import models as trainer
    from kubernetes import client as k8s

    requests, limits = own_pod.resources(pod)
    env, mounts, volumes = own_pod.volumes(pod)
    env = [k8s.V1EnvVar(name="TLPIPE_NUM_WORKERS", value=str(workers)), *env]
    pod_patch = {"serviceAccountName": own_pod.worker_service_account(pod, owner),
                 "nodeSelector": pod.node_selector or None,
                 "tolerations": own_pod.tolerations(pod), "volumes": volumes or None,
                 "containers": [{"name": CONTAINER, "volumeMounts": mounts}] if mounts else None}
    job = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
        "metadata": k8s.V1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "tlpipe"},
            owner_references=own_pod.owner_references(owner)),
        "spec": {
            "runtimeRef": {"name": RUNTIME, "kind": "ClusterTrainingRuntime",
                           "apiGroup": GROUP},
            "activeDeadlineSeconds": timeout_seconds or None,
            "trainer": {"image": image, "command": command, "numNodes": workers, "env": env,
                        "resourcesPerNode": k8s.V1ResourceRequirements(
                            requests=requests or None, limits=limits or None)},
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {
                "spec": {"replicatedJobs": [{"name": REPLICATED_JOB, "template": {"spec": {
                    "template": {"spec": pod_patch}}}}]}}}}]}}
    serialized = k8s.ApiClient().sanitize_for_serialization(job)  # drops the None fields
    return trainer.TrainerV1alpha1TrainJob.from_dict(serialized).to_dict()


def _jobset_restarts(custom, name: str, namespace: str, seen: int) -> int:
    """Group restarts of the TrainJob's JobSet (its status.restarts)."""
    jobset = custom.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace,
                                                 "jobsets", name)
    return int((jobset.get("status") or {}).get("restarts") or 0)


KIND = cluster_job.JobKind(
    kind="TrainJob", group=GROUP, version=VERSION, plural=PLURAL, pod_label=JOBSET_LABEL,
    container=CONTAINER, succeeded="Complete", failed="Failed",
    workers=lambda job: job["spec"]["trainer"]["numNodes"], restarts=_jobset_restarts)
