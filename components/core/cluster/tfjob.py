"""Multi-worker fine-tuning as a Kubeflow Training Operator TFJob (kubeflow.org/v1, legacy: the
operator is no longer developed; trainjob.py is the maintained engine).

`manifest` builds the TFJob with typed models from the `kubeflow-training` SDK and the Kubernetes
client; job.py creates, watches and deletes it. The cluster needs the Training Operator
(which sets each worker's TF_CONFIG), and the service account the pipeline's pods run as needs
what images/k8s/tfjob-rbac.yaml grants (README: "Multi-worker fine-tuning").
"""

from __future__ import annotations

from components.core.cluster import job as cluster_job, pod as own_pod
from components.core.cluster.distribution import WorkerPod

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"

CONTAINER = "tensorflow"  # the container name the Training Operator expects

JOB_LABEL = "training.kubeflow.org/job-name"  # the label the operator puts on its pods


def manifest(name: str, namespace: str, image: str, command: list[str], workers: int,
             pod: WorkerPod, restarts: int, timeout_seconds: int = 0,
             owner: dict | None = None) -> dict:
    """The TFJob as the JSON the Kubernetes API takes.

    workers: Worker replicas (>= 2; worker 0 is the chief). pod: what every worker pod gets
    (`WorkerPod`: cpu/memory requests and limits, gpus of gpu_type, node_selector,
    tolerations, secrets as env or volumes, the service account, the backup volume).
    restarts: the job's backoffLimit: pod restarts (restartPolicy OnFailure: the survivors of a
    lost worker fail their collectives and restart too) before the job fails. timeout_seconds:
    the job's activeDeadlineSeconds (0: none). owner: the launcher pod
    (`own_pod.launcher_pod`): the job's owner, and its service account the workers' when
    the settings name none.
    """
    from kubeflow.training import models as kf
    from kubernetes import client as k8s

    requests, limits = own_pod.resources(pod)
    env, mounts, volumes = own_pod.volumes(pod)
    container = k8s.V1Container(
        name=CONTAINER, image=image, command=command, env=env or None, volume_mounts=mounts or None,
        resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None))
    template = k8s.V1PodTemplateSpec(
        # a service-mesh sidecar would keep a finished worker's pod running
        metadata=k8s.V1ObjectMeta(annotations={"sidecar.istio.io/inject": "false"}),
        spec=k8s.V1PodSpec(
            containers=[container],
            service_account_name=own_pod.worker_service_account(pod, owner),
            node_selector=pod.node_selector or None, volumes=volumes or None,
            tolerations=own_pod.tolerations(pod)))
    job = kf.KubeflowOrgV1TFJob(
        api_version=f"{GROUP}/{VERSION}", kind="TFJob",
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "tlpipe"},
            owner_references=own_pod.owner_references(owner)),
        spec=kf.KubeflowOrgV1TFJobSpec(
            run_policy=kf.KubeflowOrgV1RunPolicy(
                # when the job ends, pods still running go; failed ones stay for their logs
                backoff_limit=restarts, clean_pod_policy="Running",
                active_deadline_seconds=timeout_seconds or None),
            tf_replica_specs={"Worker": kf.KubeflowOrgV1ReplicaSpec(
                replicas=workers, restart_policy="OnFailure", template=template)}))
    return k8s.ApiClient().sanitize_for_serialization(job)


KIND = cluster_job.JobKind(
    kind="TFJob", group=GROUP, version=VERSION, plural=PLURAL, pod_label=JOB_LABEL,
    container=CONTAINER, succeeded="Succeeded", failed="Failed",
    workers=lambda job: job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"],
    restarts=lambda custom, name, namespace, seen: seen)  # the operator's Restarting conditions
