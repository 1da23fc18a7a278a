"""Where users keep their images, as one URI the CLI and the pipeline accept:

    /data/images                      a local folder of class folders (or train/val/test folders)
    gs://bucket/prefix                the same layout under a Cloud Storage prefix
    /data/images.zip, gs://b/x.tar.gz a .zip, .tar, .tar.gz or .tgz archive of that layout
    tfds:tf_flowers?split=train&data_dir=/data/tfds   a TensorFlow Datasets dataset

`materialize` turns any of them into a local folder that `data.ingest_folder` reads;
`fingerprint` describes what the source holds now without downloading its images; `check` is
the cheap preflight run before anything is written. Cloud Storage credentials come from the
environment (Application Default Credentials), never from a pipeline parameter.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import urllib.parse
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from components.core import storage
from components.core.console import describe
from components.core.data import SPLIT_FOLDER_NAMES, DataError, listing_fingerprint

log = logging.getLogger("tlpipe.sources")

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_ARCHIVE_BYTES = 50 * 2**30  # uncompressed bytes an archive may expand to
MAX_ARCHIVE_FILES = 2_000_000
DOWNLOAD_THREADS = 16
RETRY_DEADLINE_SECONDS = 60.0  # how long transient Cloud Storage errors are retried
TFDS_DOWNLOAD_HOST = "storage.googleapis.com"  # TFDS's mirror of prepared datasets


@dataclass
class Source:
    """A parsed source URI. kind: "folder", "gcs", "archive" or "tfds"."""

    uri: str
    kind: str
    path: str = ""          # folder or archive path/URI; gs:// prefix for "gcs"
    name: str = ""          # TFDS dataset name[/config][:version]
    split: str = "train"    # TFDS split expression
    data_dir: str = ""      # TFDS data directory ("" = TFDS's default)


def parse(uri: str) -> Source:
    """Recognises the source kind from the URI (see the module docstring)."""
    if uri.startswith("tfds:"):
        parsed = urllib.parse.urlparse(uri)
        query = urllib.parse.parse_qs(parsed.query)
        name = (parsed.netloc + parsed.path).strip("/")
        unknown = sorted(set(query) - {"split", "data_dir"})
        if not name or unknown:
            raise DataError(f"TFDS source {uri!r} is not tfds:NAME[?split=S&data_dir=D]"
                            + (f" (unknown option {unknown[0]!r})" if unknown else ""))
        return Source(uri, "tfds", name=name, split=query.get("split", ["train"])[0],
                      data_dir=query.get("data_dir", [""])[0])
    if uri.lower().endswith(ARCHIVE_SUFFIXES):
        return Source(uri, "archive", path=uri)
    if storage.is_gcs(uri):
        return Source(uri, "gcs", path=uri.rstrip("/") + "/")
    return Source(uri, "folder", path=uri)


def check(uri: str) -> Source:
    """Cheap checks that the source exists and can be read, before any work: DataError naming
    the source and the fix otherwise."""
    source = parse(uri)
    if source.kind == "folder":
        if os.path.isfile(source.path):
            raise DataError(f"{uri} is a file, not a folder of images or an archive; pass the "
                            f"folder holding one subfolder per class, or a "
                            f"{'/'.join(ARCHIVE_SUFFIXES)} archive of it")
        listing_fingerprint(source.path)  # checks the layout
    elif source.kind == "gcs":
        if not _gcs_listing(source.path):
            raise DataError(f"{uri} holds no objects; check the bucket and prefix (images go "
                            f"under {source.path}<class>/)")
    elif source.kind == "archive":
        if storage.is_gcs(source.path):
            _gcs_blob(source.path)
        else:  # refuses hostile archives and checks the class layout before extracting
            check_archive_layout(source.path)
    else:
        builder = _tfds_builder(source)
        if not builder.is_prepared():
            _require_tfds_download(source)
    return source


def fingerprint(uri: str) -> str:
    """What the source holds now, as a sha256 hex string, without reading its images: folder
    listing (paths, sizes, modification times), object names/sizes/generations in Cloud Storage,
    archive size and time (or generation), or the TFDS name, version, split and data_dir."""
    source = parse(uri)
    if source.kind == "folder":
        return listing_fingerprint(source.path)
    digest = hashlib.sha256(source.kind.encode())
    if source.kind == "gcs":
        for blob in _gcs_listing(source.path):
            digest.update(f"{blob.name}\0{blob.size}\0{blob.generation}\n".encode())
    elif source.kind == "archive" and storage.is_gcs(source.path):
        blob = _gcs_blob(source.path)
        digest.update(f"{blob.size}\0{blob.generation}".encode())
    elif source.kind == "archive":
        stat = os.stat(source.path)
        digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
    else:
        builder = _tfds_builder(source)
        digest.update(f"{builder.info.full_name}\0{source.split}\0{source.data_dir}".encode())
    return digest.hexdigest()


def materialize(uri: str, workdir: str) -> str:
    """A local folder with the source's images (the folder itself for a local folder; otherwise
    downloaded, extracted or exported under `workdir`). DataError names the problem."""
    source = parse(uri)
    if source.kind != "archive":  # an archive is checked entry by entry by extract_archive
        check(uri)
    if source.kind == "folder":
        return source.path
    target = materialized_folder(workdir)  # each kind creates it once its checks pass
    if source.kind == "gcs":
        download_prefix(source.path, target)
    elif source.kind == "archive":
        path = source.path
        if storage.is_gcs(path):
            path = download_blob(_gcs_blob(path), os.path.join(workdir, os.path.basename(path)))
        extract_archive(path, target)
    else:
        export_tfds(source, target)
    return _content_root(target)


def materialized_folder(workdir: str) -> str:
    """Where `materialize` puts a source that is not a local folder."""
    return os.path.join(workdir, "source")


def _content_root(folder: str) -> str:
    """Descends through wrapping folders (an archive's or a prefix's single top folder) to the
    folder of class folders or split folders. A single folder with no subfolder is a class
    folder, not a wrapper: the layout check then says there is only one class."""
    while True:
        entries = [name for name in os.listdir(folder) if not name.startswith(".")]
        inner = os.path.join(folder, entries[0]) if len(entries) == 1 else ""
        if not os.path.isdir(inner) or entries[0].lower() in SPLIT_FOLDER_NAMES or \
                not any(entry.is_dir() for entry in os.scandir(inner)):
            return folder
        folder = inner


# --- Cloud Storage -------------------------------------------------------------------------

def _gcs_client():
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


def _gcs_call(uri: str, action):
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


def _gcs_listing(prefix_uri: str) -> list:
    """Every object under a gs:// prefix (the client pages through the listing), with the
    client's default retry policy for transient errors; "directory" placeholders left out."""
    from google.api_core.retry import Retry

    bucket, prefix = storage.split_gcs(prefix_uri)
    client = _gcs_client()
    blobs = _gcs_call(prefix_uri, lambda: list(client.list_blobs(
        bucket, prefix=prefix, retry=Retry(deadline=RETRY_DEADLINE_SECONDS))))
    return [blob for blob in blobs if not blob.name.endswith("/")]


def _gcs_blob(uri: str):
    from google.api_core.retry import Retry

    bucket, name = storage.split_gcs(uri)
    client = _gcs_client()
    blob = _gcs_call(uri, lambda: client.bucket(bucket).get_blob(
        name, retry=Retry(deadline=RETRY_DEADLINE_SECONDS)))
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
        _gcs_call(uri, lambda: blob.download_to_filename(
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
    blobs = _gcs_listing(prefix_uri)
    if not blobs:
        raise DataError(f"{prefix_uri} holds no objects; check the bucket and prefix")
    paths = [_inside(target, blob.name[len(prefix):], prefix_uri + blob.name[len(prefix):])
             for blob in blobs]
    os.makedirs(target, exist_ok=True)
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(download_blob, blobs, paths))
    log.info("downloaded %d objects from %s", len(blobs), prefix_uri)
    return len(blobs)


def _inside(root: str, relative: str, where: str) -> str:
    """root/relative, refusing names that are absolute or climb out with '..'."""
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith(("/", "\\")) or ".." in parts or any(":" in p for p in parts[:1]):
        raise DataError(f"entry {relative!r} of {where} would be written outside the target "
                        f"folder; remove it from the source")
    return os.path.join(root, *[p for p in parts if p not in ("", ".")])


# --- archives ------------------------------------------------------------------------------

def _archive_members(path: str) -> list[tuple[str, int]]:
    """(name, size) of every regular file in the archive, after refusing path traversal, links
    that lead out of it, and archives over MAX_ARCHIVE_FILES files or MAX_ARCHIVE_BYTES."""
    if not os.path.isfile(path):
        raise DataError(f"archive {path} does not exist; pass the path of a .zip, .tar, "
                        f".tar.gz or .tgz file")
    try:
        members = _checked_members(path)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"archive {path} cannot be read ({describe(error)}); it "
                        f"is damaged or not a {_archive_kind(path)} file: create it again")
    if len(members) > MAX_ARCHIVE_FILES or sum(size for _, size in members) > MAX_ARCHIVE_BYTES:
        raise DataError(f"archive {path} holds {len(members)} files, "
                        f"{sum(s for _, s in members) / 2**30:.1f} GiB: over the limits "
                        f"({MAX_ARCHIVE_FILES} files, {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB)")
    if not members:
        raise DataError(f"archive {path} holds no files")
    return members


def _archive_kind(path: str) -> str:
    return next(suffix for suffix in ARCHIVE_SUFFIXES if path.lower().endswith(suffix))


def _checked_members(path: str) -> list[tuple[str, int]]:
    """_archive_members' walk over the entries, letting the archive libraries' errors through."""
    members = []
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                kind = (info.external_attr >> 16) & 0o170000
                _inside("/", info.filename, path)
                if kind == 0o120000:
                    raise DataError(f"archive {path} has a symbolic link {info.filename!r}; "
                                    f"links are not extracted: store the files themselves")
                if not info.is_dir():
                    members.append((info.filename, info.file_size))
    else:
        with tarfile.open(path, "r:*") as archive:
            for info in archive.getmembers():
                _inside("/", info.name, path)
                if info.issym() or info.islnk():
                    target = os.path.normpath(os.path.join(os.path.dirname(info.name),
                                                           info.linkname))
                    if os.path.isabs(info.linkname) or target.startswith(".."):
                        raise DataError(f"archive {path} has a link {info.name!r} to "
                                        f"{info.linkname!r} outside it; remove it")
                elif info.isfile():
                    members.append((info.name, info.size))
    return members


def check_archive_layout(path: str) -> None:
    """Refuses a hostile archive (see _archive_members) or one whose folders are not a class
    layout (fewer than two classes, an empty class...), before anything is extracted: its
    folders are laid out empty in a scratch folder (one empty file per folder that holds
    files) and checked like a local folder. DataError names `path`, never the scratch folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tlpipe-layout-") as scratch:
        for folder in {os.path.dirname(name) for name, _ in _archive_members(path)
                       if not os.path.basename(name).startswith(".")}:
            os.makedirs(_inside(scratch, folder, path), exist_ok=True)
            open(os.path.join(scratch, folder, "file"), "wb").close()
        with local_names(scratch, path):
            from components.core.data import discover

            discover(_content_root(scratch))


@contextlib.contextmanager
def local_names(folder: str, uri: str):
    """Re-raises a DataError whose message names `folder` (a download or extraction place)
    with `uri`, the source the user gave, in its place."""
    try:
        yield
    except DataError as error:
        message = str(error)
        if folder not in message:
            raise
        raise DataError(message.replace(folder.rstrip("/"), uri.rstrip("/"))) from None


def extract_archive(path: str, target: str) -> int:
    """Extracts the regular files of a checked archive (see _archive_members) into `target`;
    links and special files are skipped. Returns the number of files written."""
    members = dict(_archive_members(path))
    os.makedirs(target, exist_ok=True)
    try:
        _extract(path, members, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise DataError(f"archive {path} is damaged ({describe(error)}); "
                        f"create it again")
    return len(members)


def _extract(path: str, members: dict, target: str) -> None:
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for name in members:
                destination = _inside(target, name, path)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with archive.open(name) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    else:
        with tarfile.open(path, "r:*") as archive:
            chosen = [m for m in archive.getmembers() if m.isfile() and m.name in members]
            archive.extractall(target, members=chosen, filter="data")


# --- TensorFlow Datasets -------------------------------------------------------------------

def _tfds_builder(source: Source):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"{source.uri} needs tensorflow-datasets: pip install "
                        f"'tlpipe[tfds]'")
    try:
        return tfds.builder(source.name, data_dir=source.data_dir or None)
    except Exception as error:  # DatasetNotFoundError and friends
        raise DataError(f"TFDS has no dataset {source.name!r} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}); see `tfds.list_builders()`")


def _require_tfds_download(source: Source) -> None:
    """A dataset not yet in data_dir must be downloaded: refuse at once when TFDS's servers
    cannot be reached, rather than after minutes of download retries."""
    import socket

    try:
        socket.create_connection((TFDS_DOWNLOAD_HOST, 443), timeout=5).close()
    except OSError as error:
        raise DataError(f"{source.uri}: the dataset is not prepared in "
                        f"{source.data_dir or 'the default data_dir'} and {TFDS_DOWNLOAD_HOST} "
                        f"cannot be reached ({error}); prepare it where there is internet "
                        f"(`tfds build {source.name} --data_dir DIR`) and pass data_dir=DIR")


def export_tfds(source: Source, target: str) -> int:
    """Writes the TFDS split as target/<class name>/<index>.png (the dataset's first image
    feature and first class-label feature), downloading and preparing the dataset first if it
    is not in data_dir (needs internet). Returns the number of images."""
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    builder = _tfds_builder(source)
    image_key, label_key = _tfds_keys(builder.info.features, source.uri)
    names = builder.info.features[label_key].names
    try:
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=source.split)
    except Exception as error:
        raise DataError(f"cannot load {source.uri}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0][:300]}; prepare it in data_dir "
                        f"beforehand when this machine has no internet")
    count = 0
    os.makedirs(target, exist_ok=True)
    for count, example in enumerate(tfds.as_numpy(dataset), start=1):
        folder = os.path.join(target, names[int(example[label_key])])
        os.makedirs(folder, exist_ok=True)
        pixels = np.asarray(example[image_key])
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
            os.path.join(folder, f"{count:07d}.png"))
    if count == 0:
        raise DataError(f"{source.uri} split {source.split!r} is empty")
    return count


def _tfds_keys(features, uri: str) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not images or not labels:
        raise DataError(f"{uri} is not an image classification dataset (it needs an Image and "
                        f"a ClassLabel feature; it has {sorted(features.keys())})")
    return images[0], labels[0]
