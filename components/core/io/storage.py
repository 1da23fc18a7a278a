"""Local paths and gs:// URIs, and atomic writes.

Writes go to a temporary sibling that is renamed into place only when complete, so a killed step
never leaves a half-written artifact that looks whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from components.core.errors import InputError


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b'); ValueError if there is no bucket."""
    bucket, _, blob = uri[len("gs://"):].partition("/")
    if not bucket:
        raise InputError(f"{uri} has no bucket name; write it as gs://BUCKET/PATH")
    return bucket, blob


def fetch(uri: str, directory: str) -> str:
    """Returns a local path for `uri`: local paths as they are, gs:// objects downloaded into
    `directory` with google-cloud-storage (credentials from the environment, default retries)."""
    if not is_gcs(uri):
        return uri
    from google.cloud import storage

    bucket_name, blob_name = split_gcs(uri)
    target = os.path.join(directory, os.path.basename(blob_name) or "download")
    blob = storage.Client().bucket(bucket_name).blob(blob_name)
    with atomic_file(target) as partial:
        blob.download_to_filename(partial)
    return target


def upload_tree(directory: str, uri: str) -> int:
    """Uploads every file under local `directory` to the gs:// prefix `uri` (relative names
    kept); returns the number of files."""
    from google.cloud import storage

    bucket_name, prefix = split_gcs(uri.rstrip("/") + "/")
    bucket = storage.Client().bucket(bucket_name)
    count = 0
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            bucket.blob(prefix + relative).upload_from_filename(path)
            count += 1
    return count


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yields a temporary directory beside `path`; on success it replaces `path` in one rename.

    On error the temporary directory is removed and `path` is left as it was.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        yield partial
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str):
    """Yields a temporary file path beside `path`; renamed onto `path` only on success."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    os.close(handle)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def write_text(path: str, text: str) -> None:
    """Writes `text` (UTF-8) atomically."""
    with atomic_file(path) as partial:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)


def write_json(path: str, value) -> None:
    """Writes `value` as indented JSON, atomically."""
    with atomic_file(path) as partial:
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, sort_keys=True)
            handle.write("\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def tree_size(path: str) -> int:
    """Total bytes of the files under folder `path`."""
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)
