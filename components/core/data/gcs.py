"""Cloud Storage reads: listings and parallel downloads with retries on transient errors."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from components.core.data.discovery import DataError
from components.core.data.local_folder import safe_join
from components.core.io import storage

log = logging.getLogger("tlpipe.sources")

DOWNLOAD_THREADS = 16

RETRY_DEADLINE_SECONDS = 60.0  # how long transient Cloud Storage errors are retried


def gcs_client():
    """A Cloud Storage client with the environment's credentials (the emulator's when
    STORAGE_EMULATOR_HOST is set)."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage as gcs

    try:
        return gcs.Client()
    except DefaultCredentialsError as error:
        raise DataError(f"no Google Cloud credentials ({error}); set "
                        f"GOOGLE_APPLICATION_CREDENTIALS to a key file, run `gcloud auth "
                        f"application-default login`, or use Workload Identity on GKE")


def gcs_call(uri: str, action):
    """Runs a Cloud Storage call, turning its errors into a DataError naming `uri`."""
    from google.api_core import exceptions

    try:
        return action()
    except exceptions.NotFound as error:
        raise DataError(f"{uri} does not exist ({error.message}); check the bucket and path")
    except exceptions.Forbidden as error:
        raise DataError(f"no permission to read {uri} ({error.message}); grant the "
                        f"credentials' account storage.objects.list/get on the bucket")
    except exceptions.GoogleAPICallError as error:
        raise DataError(f"Cloud Storage failed for {uri}: {error}")
    except exceptions.RetryError as error:  # transient errors until the deadline
        raise DataError(f"cannot reach Cloud Storage for {uri} (retried "
                        f"{RETRY_DEADLINE_SECONDS:.0f} s: {error.cause}); check the network "
                        f"(or STORAGE_EMULATOR_HOST)")
    except OSError as error:  # connection refused, DNS, TLS
        raise DataError(f"cannot reach Cloud Storage for {uri}: {error}; check the network "
                        f"(or STORAGE_EMULATOR_HOST)")


def announced_retry(uri: str):
    """The client's retry policy for transient errors (up to RETRY_DEADLINE_SECONDS), saying
    so once, at the first error, instead of waiting a minute in silence (a warning: on the
    console of the CLI, in the log of a step)."""
    from google.api_core.retry import Retry

    said = []

    def announce(error):
        if not said:
            said.append(error)
            log.warning("Cloud Storage is not answering for %s (%s); retrying for up to %.0f s",
                        uri, type(error).__name__, RETRY_DEADLINE_SECONDS)

    return Retry(deadline=RETRY_DEADLINE_SECONDS, on_error=announce)


def gcs_listing(prefix_uri: str) -> list:
    """Every object under a gs:// prefix (the client pages through the listing), with the
    client's default retry policy for transient errors; "directory" placeholders left out."""
    bucket, prefix = storage.split_gcs(prefix_uri)
    client = gcs_client()
    blobs = gcs_call(prefix_uri, lambda: list(client.list_blobs(
        bucket, prefix=prefix, retry=announced_retry(prefix_uri))))
    return [blob for blob in blobs if not blob.name.endswith("/")]


def gcs_blob(uri: str):
    """The Cloud Storage object at gs:// `uri`, fetched with retries; DataError when it does not
    exist or cannot be read."""
    bucket, name = storage.split_gcs(uri)
    client = gcs_client()
    blob = gcs_call(uri, lambda: client.bucket(bucket).get_blob(
        name, retry=announced_retry(uri)))
    if blob is None:
        raise DataError(f"{uri} does not exist; check the bucket and object name")
    return blob


def download_blob(blob, path: str) -> str:
    """Downloads one object to `path`, only if it still is the generation that was listed
    (a source rewritten while it is read fails instead of mixing old and new)."""
    from google.api_core import exceptions

    os.makedirs(os.path.dirname(path), exist_ok=True)
    uri = f"gs://{blob.bucket.name}/{blob.name}"
    try:
        gcs_call(uri, lambda: blob.download_to_filename(
            path, if_generation_match=blob.generation))
    except DataError as error:
        raise DataError(f"{error}; if the source changed while it was read, run again")
    except exceptions.PreconditionFailed:
        raise DataError(f"{uri} changed while the source was read; run again once it is "
                        f"stable")
    return path


def download_prefix(prefix_uri: str, target: str) -> int:
    """Downloads every object under `prefix_uri` into `target` (relative names kept), with
    DOWNLOAD_THREADS parallel downloads. Object names that would leave `target` are refused.
    Returns the number of objects."""
    _, prefix = storage.split_gcs(prefix_uri)
    blobs = gcs_listing(prefix_uri)
    if not blobs:
        raise DataError(f"{prefix_uri} holds no objects; check the bucket and prefix")
    paths = [safe_join(target, blob.name[len(prefix):], prefix_uri + blob.name[len(prefix):])
             for blob in blobs]
    os.makedirs(target, exist_ok=True)
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(download_blob, blobs, paths))
    log.info("downloaded %d objects from %s", len(blobs), prefix_uri)
    return len(blobs)
