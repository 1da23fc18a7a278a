"""Launching fine-tuning's workers as a cluster job (TrainJob or TFJob): the job's name and
deadline from the step, its manifest from the engine's module, the chief's model copied back.
"""

from __future__ import annotations

import hashlib
import os
import shutil

from components.core.cluster import distribute
from components.core.cluster.distribution import Distribution
from components.core.cluster.job import run
from components.core.cluster.pod import launcher_pod, own_namespace
from components.core.io import storage

LAUNCHER_MARGIN_SECONDS = 300  # the job's deadline is this much before the step's (or 10%)


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


def fine_tune(distribution: Distribution, uris: dict, config_json: str, model_dir: str,
              api_client=None, poll_seconds: float = 10) -> int:
    """The fine-tune step on a cluster: runs the workers as the job of distribution.launcher
    (TrainJob or TFJob, see `_engine`), then copies the chief's model from backup_root into
    `model_dir`. uris: the step's artifact URIs {"images", "backbone", "head"} (read by the
    worker pods) and "model" (names the job). Returns the worker-group restarts."""
    engine = _engine(distribution.launcher)
    root = distribution.backup_root
    mounted = distribution.pod.backup_volume.mount_path
    if not (storage.is_gcs(root) or mounted and inside(root, mounted)):
        raise ValueError("multi-worker fine-tuning on a cluster needs backup_root: "
                         "gs://BUCKET/PATH, or a path inside backup_volume.mount_path, in the "
                         "deployment settings")
    name = job_name(uris["model"])
    remote = f"{root.rstrip('/')}/{name}"
    command = distribute.worker_command(uris["images"], uris["backbone"], uris["head"],
                                        f"{remote}/model", config_json, f"{remote}/backups",
                                        python="python")
    deadline = job_deadline(distribution.timeout_seconds)
    job = engine.manifest(name, distribution.namespace or own_namespace(), distribution.image,
                          command, distribution.workers, distribution.pod,
                          distribution.restarts, deadline, launcher_pod())
    restarts = run(engine.KIND, job, api_client, deadline,
                   distribution.start_timeout_seconds, poll_seconds)
    with storage.atomic_dir(model_dir) as partial:
        if storage.is_gcs(remote):
            from components.core.data import gcs

            gcs.download_prefix(f"{remote}/model/", partial)
        else:  # the backup volume is mounted here too
            shutil.copytree(f"{remote}/model", partial, dirs_exist_ok=True)
    return restarts


def _engine(launcher: str):
    """The module that builds and names `launcher`'s job (its manifest() and KIND): "trainjob"
    or "tfjob"."""
    from components.core.cluster import tfjob, trainjob

    return {"tfjob": tfjob, "trainjob": trainjob}[launcher]


def inside(path: str, folder: str) -> bool:
    """Whether absolute `path` is `folder` or below it."""
    return os.path.isabs(path) and os.path.commonpath(
        [os.path.normpath(path), os.path.normpath(folder)]) == os.path.normpath(folder)
