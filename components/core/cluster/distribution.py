"""The fine-tune step's distribution contract: how many workers, launched how, with what pod.

Built once from the deployment settings when the pipeline is compiled
(`pipelines.deploy.distribution`), carried into the step as the JSON of `to_dict`, and read
back once at the step's boundary (`Distribution.from_dict`); everything past that reads
attributes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from components.core.config.coerce import from_mapping

CLUSTER_LAUNCHERS = ("trainjob", "tfjob")  # the engines, by the module that builds their job
LAUNCHERS = ("local", *CLUSTER_LAUNCHERS)


@dataclass
class Toleration:
    """A Kubernetes toleration. operator: "Equal" (default, with value) or "Exists" (no value);
    effect: "", "NoSchedule", "PreferNoSchedule" or "NoExecute"."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


@dataclass
class SecretRef:
    """A Kubernetes Secret given to a step, by name: either as environment variables
    (`env`: {secret key: variable name}) or as files under `mount_path` (an absolute path)."""

    name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    mount_path: str = ""


@dataclass
class BackupVolume:
    """A PersistentVolumeClaim (ReadWriteMany, so every worker pod and the fine-tune step's pod
    can mount it at once) mounted at `mount_path` (absolute), for backup_root on a cluster
    without a bucket."""

    claim_name: str = ""
    mount_path: str = ""


@dataclass
class PodResources:
    """What a pod is given: Kubernetes quantities for CPU and memory ("500m", "4", "16Gi"; ""
    leaves the cluster's default), `gpus` of `gpu_type` (the extended resource name), >= 0,
    placement (node selector, tolerations) and Secrets. A step's settings start from these."""

    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    gpus: int = 0
    gpu_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    secrets: list[SecretRef] = field(default_factory=list)


@dataclass
class WorkerPod(PodResources):
    """What every worker pod of a cluster job gets: the fine-tune step's `PodResources`, the
    service account ("" takes the launcher pod's) and the backup volume."""

    worker_service_account: str = ""
    backup_volume: BackupVolume = field(default_factory=BackupVolume)


@dataclass
class Distribution:
    """How the fine-tune step trains. workers: processes training together, >= 1 (1: in the
    step's own process). launcher: one of LAUNCHERS, "local" processes beside the step or a
    cluster job. restarts: relaunches of the worker group after a lost worker (it resumes
    from the backups). start_timeout_seconds: how long the workers have to start.
    timeout_seconds: the step's time-out (0: none; a cluster job's deadline comes before it).
    For a cluster job of 2+ workers: the worker `image`, `backup_root` (gs:// or a path on the
    backup volume), the job's `namespace` ("": the step's own) and the worker `pod`."""

    workers: int = 1
    launcher: str = "local"
    restarts: int = 3
    start_timeout_seconds: int = 600
    timeout_seconds: int = 0
    image: str = ""
    backup_root: str = ""
    namespace: str = ""
    pod: WorkerPod = field(default_factory=WorkerPod)

    @property
    def runs_a_cluster_job(self) -> bool:
        """Whether the workers are a TrainJob or TFJob (else local processes, or the step's
        own process for one worker)."""
        return self.workers > 1 and self.launcher in CLUSTER_LAUNCHERS

    def to_dict(self) -> dict:
        """The JSON-ready form the compiled pipeline carries (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Distribution:
        """The contract from `to_dict`'s form; a ConfigError names a key this version does
        not know (a pipeline compiled by another tlpipe version: compile it again)."""
        return from_mapping(cls, values, "distribution.")
