"""Where a model registry keeps its objects: a local folder or a gs:// prefix, behind the few
operations the registry needs, each atomic.

Keys are relative, "/"-separated names ("trashnet/aliases/production.json"). Every write either
creates an object that must not exist yet or replaces one only if it is still the version that
was read (compare-and-swap): on Cloud Storage with the object generation as precondition
(`if_generation_match`, 0 for "does not exist"), locally with an exclusive flock on the root's
lock file around the check and an atomic rename. A loser gets False and re-reads; nothing is
ever overwritten blindly or half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile

from components.core.errors import InputError
from components.core.io import storage


class RegistryError(InputError):
    """The registry cannot do what was asked (unreachable, unknown version, nothing in
    production); the message names the problem and the fix."""


def open_store(root: str):
    """The store for `root`: GcsStore for gs://BUCKET/PREFIX, else LocalStore for a folder
    (created when first written to)."""
    if not root:
        raise RegistryError("no model registry root given; pass --registry (a folder or "
                            "gs://BUCKET/PATH) or set model_registry.root in the settings")
    return GcsStore(root) if storage.is_gcs(root) else LocalStore(root)


class LocalStore:
    """A registry in a local (or mounted) folder. Writers serialise on ROOT/.lock (flock);
    readers never lock: every file appears whole, by rename."""

    LOCK = ".lock"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def uri(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def read(self, key: str) -> tuple[bytes | None, str]:
        """(content, token) of `key`; (None, "") when it does not exist. The token (the
        content's sha256) is what `swap` compares."""
        try:
            with open(self.uri(key), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None, ""
        except OSError as error:
            raise _unreachable(self.root, error) from None
        return data, hashlib.sha256(data).hexdigest()

    def create(self, key: str, data: bytes) -> bool:
        """Writes `key` only if it does not exist; False if it does."""
        with self._locked():
            if os.path.exists(self.uri(key)):
                return False
            self._write(key, data)
            return True

    def swap(self, key: str, token: str, data: bytes) -> bool:
        """Replaces `key` only if its token is still `token` ("" : only if it does not exist);
        False if another writer got there first."""
        with self._locked():
            if self.read(key)[1] != token:
                return False
            self._write(key, data)
            return True

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` ("a/b/"), sorted; temporary files left out."""
        top = self.uri(prefix.rstrip("/"))
        found = []
        for folder, folders, names in os.walk(top):
            folders[:] = [name for name in folders if not name.startswith(".")]
            found.extend(os.path.relpath(os.path.join(folder, name), self.root).replace(
                os.sep, "/") for name in names if not name.startswith("."))
        return sorted(found)

    def put_tree(self, folder: str, prefix: str) -> None:
        """Copies local `folder` to `prefix`, which must not exist: copied beside it, then
        renamed into place whole."""
        target = self.uri(prefix.rstrip("/"))
        parent, staging = os.path.dirname(target), ""
        try:
            os.makedirs(parent, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            os.rename(staging, target)  # fails if a non-empty target exists
        except OSError as error:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
            raise _unreachable(self.root, error) from None

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        try:
            os.makedirs(self.root, exist_ok=True)
            handle = open(os.path.join(self.root, self.LOCK), "a")
        except OSError as error:
            raise _unreachable(self.root, error) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _write(self, key: str, data: bytes) -> None:
        with storage.atomic_file(self.uri(key)) as partial:
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())


class GcsStore:
    """A registry under a gs:// prefix. Compare-and-swap on object generations; the client's
    retries apply to conditional writes only (they are idempotent)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.bucket_name, self.prefix = storage.split_gcs(self.root + "/")
        self._bucket = None

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}"

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage as gcs

            self._bucket = gcs.Client().bucket(self.bucket_name)
        return self._bucket

    def read(self, key: str) -> tuple[bytes | None, int]:
        """(content, generation) of `key`; (None, 0) when it does not exist."""
        from google.api_core import exceptions

        def fetch():
            blob = self.bucket.get_blob(self.prefix + key)
            if blob is None:
                return None, 0
            try:
                return blob.download_as_bytes(if_generation_match=blob.generation), \
                    blob.generation
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                return fetch()  # replaced or deleted between the two calls: read again

        return self._call(fetch)

    def create(self, key: str, data: bytes) -> bool:
        return self.swap(key, 0, data)

    def swap(self, key: str, token: int, data: bytes) -> bool:
        """Writes `key` only if its generation is still `token` (0: only if absent)."""
        from google.api_core import exceptions

        def write():
            try:
                self.bucket.blob(self.prefix + key).upload_from_string(
                    data, content_type="application/json", if_generation_match=token)
                return True
            except exceptions.PreconditionFailed:
                return False

        return self._call(write)

    def keys(self, prefix: str) -> list[str]:
        start = self.prefix + prefix
        return sorted(blob.name[len(self.prefix):] for blob in self._call(
            lambda: list(self.bucket.client.list_blobs(self.bucket, prefix=start)))
            if not blob.name.endswith("/"))

    def put_tree(self, folder: str, prefix: str) -> None:
        """Uploads local `folder` under `prefix` (a fresh one: callers claim it first)."""
        self._call(lambda: storage.upload_tree(folder, self.uri(prefix)))

    def _call(self, action):
        from google.api_core import exceptions
        from google.auth.exceptions import DefaultCredentialsError

        try:
            return action()
        except exceptions.Forbidden as error:
            raise RegistryError(f"no permission on the model registry {self.root} "
                                f"({error.message}); grant the credentials' account "
                                f"storage.objects.create/get/list on the bucket") from None
        except exceptions.NotFound as error:
            raise RegistryError(f"the model registry's bucket gs://{self.bucket_name} does not "
                                f"exist ({error.message}); create it or fix "
                                f"model_registry.root / --registry") from None
        except (exceptions.GoogleAPICallError, exceptions.RetryError, DefaultCredentialsError,
                OSError) as error:
            raise _unreachable(self.root, error) from None


def _unreachable(root: str, error: Exception) -> RegistryError:
    detail = getattr(error, "strerror", None) or str(error).splitlines()[0]
    return RegistryError(f"cannot reach the model registry {root} ({detail}); check the path "
                         f"or bucket, the network and the credentials, or pass another "
                         f"--registry")
