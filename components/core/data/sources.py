"""Where users keep their images, as one URI the CLI and the pipeline accept:

    /data/images                      a local folder of class folders (or train/val/test folders)
    gs://bucket/prefix                the same layout under a Cloud Storage prefix
    /data/images.zip, gs://b/x.tar.gz a .zip, .tar, .tar.gz or .tgz archive of that layout
    tfds:tf_flowers?split=train&data_dir=/data/tfds   a TensorFlow Datasets dataset

`materialize` turns any of them into a local folder that `ingest.ingest_folder` reads;
`fingerprint` describes what the source holds now without downloading its images; `check` is
the cheap preflight run before anything is written. Cloud Storage credentials come from the
environment (Application Default Credentials), never from a pipeline parameter.
"""

from __future__ import annotations

import hashlib
import logging
import os

from components.core.data.archives import ARCHIVE_SUFFIXES, check_archive_layout, extract_archive
from components.core.data.discovery import DataError, listing_fingerprint
from components.core.data.gcs import download_blob, download_prefix, gcs_blob, gcs_listing
from components.core.data.local_folder import content_root
from components.core.data.source_uri import Source, parse
from components.core.data.tfds_source import export_tfds, require_tfds_download, tfds_builder
from components.core.io import storage

log = logging.getLogger("tlpipe.sources")


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
        if not gcs_listing(source.path):
            raise DataError(f"{uri} holds no objects; check the bucket and prefix (images go "
                            f"under {source.path}<class>/)")
    elif source.kind == "archive":
        if storage.is_gcs(source.path):
            gcs_blob(source.path)
        else:  # refuses hostile archives and checks the class layout before extracting
            check_archive_layout(source.path)
    else:
        builder = tfds_builder(source)
        if not builder.is_prepared():
            require_tfds_download(source)
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
        for blob in gcs_listing(source.path):
            digest.update(f"{blob.name}\0{blob.size}\0{blob.generation}\n".encode())
    elif source.kind == "archive" and storage.is_gcs(source.path):
        blob = gcs_blob(source.path)
        digest.update(f"{blob.size}\0{blob.generation}".encode())
    elif source.kind == "archive":
        stat = os.stat(source.path)
        digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
    else:
        builder = tfds_builder(source)
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
            path = download_blob(gcs_blob(path), os.path.join(workdir, os.path.basename(path)))
        extract_archive(path, target)
    else:
        export_tfds(source, target)
    return content_root(target)


def materialized_folder(workdir: str) -> str:
    """Where `materialize` puts a source that is not a local folder."""
    return os.path.join(workdir, "source")


