"""Zip and tar archives as data sources: their members checked (size, count, paths that
stay inside the target) before anything is extracted.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
import zlib

from components.core.data.discovery import DataError
from components.core.data.local_folder import content_root, local_names, safe_join
from components.core.io.console import describe

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

MAX_ARCHIVE_BYTES = 50 * 2**30  # uncompressed bytes an archive may expand to

MAX_ARCHIVE_FILES = 2_000_000


def archive_members(path: str) -> list[tuple[str, int]]:
    """(name, size) of every regular file in the archive, after refusing path traversal, links
    that lead out of it, and archives over MAX_ARCHIVE_FILES files or MAX_ARCHIVE_BYTES."""
    if not os.path.isfile(path):
        raise DataError(f"archive {path} does not exist; pass the path of a .zip, .tar, "
                        f".tar.gz or .tgz file")
    try:
        members = _checked_members(path)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"archive {path} cannot be read ({describe(error)}); it "
                        f"is damaged or not a {archive_kind(path)} file: create it again")
    if len(members) > MAX_ARCHIVE_FILES or sum(size for _, size in members) > MAX_ARCHIVE_BYTES:
        raise DataError(f"archive {path} holds {len(members)} files, "
                        f"{sum(s for _, s in members) / 2**30:.1f} GiB: over the limits "
                        f"({MAX_ARCHIVE_FILES} files, {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB)")
    if not members:
        raise DataError(f"archive {path} holds no files")
    return members


def archive_kind(path: str) -> str:
    """The archive suffix `path` ends with (one of ARCHIVE_SUFFIXES, case-insensitive)."""
    return next(suffix for suffix in ARCHIVE_SUFFIXES if path.lower().endswith(suffix))


def _checked_members(path: str) -> list[tuple[str, int]]:
    """archive_members' walk over the entries, letting the archive libraries' errors through."""
    members = []
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                kind = (info.external_attr >> 16) & 0o170000
                safe_join("/", info.filename, path)
                if kind == 0o120000:
                    raise DataError(f"archive {path} has a symbolic link {info.filename!r}; "
                                    f"links are not extracted: store the files themselves")
                if not info.is_dir():
                    members.append((info.filename, info.file_size))
    else:
        with tarfile.open(path, "r:*") as archive:
            for info in archive.getmembers():
                safe_join("/", info.name, path)
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
    """Refuses a hostile archive (see archive_members) or one whose folders are not a class
    layout (fewer than two classes, an empty class...), before anything is extracted: its
    folders are laid out empty in a scratch folder (one empty file per folder that holds
    files) and checked like a local folder. DataError names `path`, never the scratch folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tlpipe-layout-") as scratch:
        for folder in {os.path.dirname(name) for name, _ in archive_members(path)
                       if not os.path.basename(name).startswith(".")}:
            os.makedirs(safe_join(scratch, folder, path), exist_ok=True)
            open(os.path.join(scratch, folder, "file"), "wb").close()
        with local_names(scratch, path):
            from components.core.data.discovery import discover

            discover(content_root(scratch))


def extract_archive(path: str, target: str) -> int:
    """Extracts the regular files of a checked archive (see archive_members) into `target`;
    links and special files are skipped. Returns the number of files written."""
    members = dict(archive_members(path))
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
                destination = safe_join(target, name, path)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with archive.open(name) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    else:
        with tarfile.open(path, "r:*") as archive:
            chosen = [m for m in archive.getmembers() if m.isfile() and m.name in members]
            archive.extractall(target, members=chosen, filter="data")
