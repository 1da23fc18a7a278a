"""Training backups that let a restarted fine-tuning job resume from its last completed epoch.

Each worker keeps its own backup directory (`worker_dir`): one shared directory breaks when
workers write at once (Keras's BackupAndRestore hits an HDF5 lock there). A backup is one
`backup.npz` holding named arrays and a JSON state; it is replaced in one step (a rename
locally, a single object upload on gs://), so a worker killed while saving leaves the previous
backup whole. Directories are local paths or gs:// URIs (google-cloud-storage).
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np

from components.core import storage

FILE = "backup.npz"
STATE_KEY = "__state__"


def worker_dir(root: str, task_type: str, task_index: int) -> str:
    """This worker's backup directory under `root` (a local path or gs:// URI)."""
    return f"{root.rstrip('/')}/{task_type}-{task_index}"


def save(directory: str, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes `state` (JSON-serialisable) and `arrays` as the directory's backup, replacing the
    previous one atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{STATE_KEY: np.array(json.dumps(state))})
    if storage.is_gcs(directory):
        _blob(directory).upload_from_string(buffer.getvalue())
        return
    path = os.path.join(directory, FILE)
    with storage.atomic_file(path) as partial:
        with open(partial, "wb") as handle:
            handle.write(buffer.getvalue())


def load(directory: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(state, arrays) of the directory's backup, or None when there is none."""
    if storage.is_gcs(directory):
        blob = _blob(directory)
        if not blob.exists():
            return None
        raw = blob.download_as_bytes()
    else:
        path = os.path.join(directory, FILE)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as handle:
            raw = handle.read()
    with np.load(io.BytesIO(raw)) as stored:
        arrays = {name: stored[name] for name in stored.files if name != STATE_KEY}
        state = json.loads(str(stored[STATE_KEY]))
    return state, arrays


def remove(directory: str) -> None:
    """Deletes the directory's backup (training finished: nothing left to resume)."""
    if storage.is_gcs(directory):
        blob = _blob(directory)
        if blob.exists():
            blob.delete()
        return
    shutil.rmtree(directory, ignore_errors=True)


def _blob(directory: str):
    from google.cloud import storage as gcs

    bucket, prefix = storage.split_gcs(f"{directory.rstrip('/')}/{FILE}")
    return gcs.Client().bucket(bucket).blob(prefix)
