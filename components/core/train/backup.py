"""Training backups that let a restarted fine-tuning job resume from its last completed epoch.

Each worker keeps its own backup directory (`worker_dir`): one shared directory breaks when
workers write at once (Keras's BackupAndRestore hits an HDF5 lock there). A backup is one file
per completed epoch, `epoch-NNNNN.npz`, holding named arrays and a JSON state, written in one
step (a rename locally, a single object upload on gs://), so a worker killed while saving
leaves its earlier backups whole. The last two epochs are kept: a group killed between two
workers' saves has workers one epoch apart, and resumes from the older epoch, which every
worker has. Directories are local paths or gs:// URIs (google-cloud-storage).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from typing import TYPE_CHECKING

import numpy as np

from components.core.io import storage

if TYPE_CHECKING:
    import keras


STATE_KEY = "__state__"

KEEP = 2  # epochs kept per worker


def worker_dir(root: str, task_type: str, task_index: int) -> str:
    """This worker's backup directory under `root` (a local path or gs:// URI)."""
    return f"{root.rstrip('/')}/{task_type}-{task_index}"


def file_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}.npz"


def save(directory: str, epoch: int, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes the backup of completed `epoch` (>= 1): `state` (JSON-serialisable) and `arrays`,
    atomically; then removes this directory's backups older than the last KEEP epochs."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{STATE_KEY: np.array(json.dumps(state))})
    if storage.is_gcs(directory):
        _blob(directory, file_name(epoch)).upload_from_string(buffer.getvalue())
    else:
        with storage.atomic_file(os.path.join(directory, file_name(epoch))) as partial:
            with open(partial, "wb") as handle:
                handle.write(buffer.getvalue())
    for old in epochs(directory)[:-KEEP]:
        _delete(directory, file_name(old))


def epochs(directory: str) -> list[int]:
    """The epochs this directory holds backups of, ascending ([] when none)."""
    if storage.is_gcs(directory):
        from google.cloud import storage as gcs

        bucket, prefix = storage.split_gcs(directory.rstrip("/") + "/")
        names = [blob.name[len(prefix):] for blob in gcs.Client().list_blobs(bucket,
                                                                             prefix=prefix)]
    else:
        names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(name[6:11]) for name in names
                  if name.startswith("epoch-") and name.endswith(".npz") and len(name) == 15)


def load(directory: str, epoch: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(state, arrays) of the backup of `epoch` in this directory."""
    if storage.is_gcs(directory):
        raw = _blob(directory, file_name(epoch)).download_as_bytes()
    else:
        with open(os.path.join(directory, file_name(epoch)), "rb") as handle:
            raw = handle.read()
    with np.load(io.BytesIO(raw)) as stored:
        arrays = {name: stored[name] for name in stored.files if name != STATE_KEY}
        state = json.loads(str(stored[STATE_KEY]))
    return state, arrays


def remove(directory: str) -> None:
    """Deletes the directory's backups (training finished: nothing left to resume)."""
    if storage.is_gcs(directory):
        for epoch in epochs(directory):
            _delete(directory, file_name(epoch))
        return
    shutil.rmtree(directory, ignore_errors=True)


def _delete(directory: str, name: str) -> None:
    if storage.is_gcs(directory):
        _blob(directory, name).delete()
    elif os.path.exists(os.path.join(directory, name)):
        os.remove(os.path.join(directory, name))


def _blob(directory: str, name: str):
    from google.cloud import storage as gcs

    bucket, path = storage.split_gcs(f"{directory.rstrip('/')}/{name}")
    return gcs.Client().bucket(bucket).blob(path)


def resume_epoch(strategy, backup_dir: str, total_epochs: int) -> int:
    """The epoch to resume after: the latest epoch every worker has a backup of (0: start
    afresh). A collective: every worker calls it. Workers can be one epoch apart when a group
    dies between their saves; each keeps its last two backups, so all hold this one."""
    import tensorflow as tf

    saved = epochs(backup_dir)
    latest = min(saved[-1] if saved else 0, total_epochs)
    # the workers' latest epochs as counts per epoch (SUM is what collectives offer); the
    # lowest epoch with a count is the one all of them have
    counts = strategy.reduce("SUM", strategy.run(lambda: tf.one_hot(latest, total_epochs + 1)),
                             axis=None).numpy()
    agreed = int(np.flatnonzero(counts)[0])
    if agreed and agreed not in saved:
        raise RuntimeError(f"the backup of epoch {agreed} is missing from {backup_dir} (other "
                           f"workers resume from it); delete the backups to start afresh")
    return agreed


def state_arrays(model: keras.Model, optimizer, best: dict) -> dict[str, np.ndarray]:
    """Everything a resumed run needs: the model's variables (random-generator states
    included), the optimizer's (step count, moments) and the best epoch's weights."""
    arrays = {f"model/{index}": variable.numpy() for index, variable in
              enumerate(model.variables)}
    arrays.update({f"optimizer/{index}": variable.numpy() for index, variable in
                   enumerate(optimizer.variables)})
    arrays.update({f"best/{index}": best[path] for index, path in enumerate(sorted(best))})
    return arrays


def restore_state_arrays(model: keras.Model, optimizer,
                         arrays: dict[str, np.ndarray]) -> None:
    """Assigns a backup's arrays (from `state_arrays`) to the model's and the optimizer's
    variables; ValueError when the backup was written for another configuration."""
    for prefix, variables in (("model", model.variables), ("optimizer", optimizer.variables)):
        if sum(name.startswith(f"{prefix}/") for name in arrays) != len(variables):
            raise ValueError(f"the backup does not match this model's {prefix} variables: it "
                             "was written by another configuration; delete the backup "
                             "directory to start afresh")
        for index, variable in enumerate(variables):
            variable.assign(arrays[f"{prefix}/{index}"])
