"""Finding a labelled image folder's classes and files (class folders, optionally inside
split folders), and fingerprinting its listing.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Optional

SPLITS = ("train", "val", "test")

PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # file names that need no quoting anywhere

SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class DataError(ValueError):
    """The source cannot become a dataset; the message names the problem and the fix."""


@dataclass
class SourceFile:
    """One file found in the source. given_split: the split folder it was in, if any."""

    path: str
    relpath: str
    label: str
    given_split: Optional[str] = None


def discover(root: str) -> tuple[list[str], list[SourceFile]]:
    """Lists class names and candidate files of a local folder, checking the layout.

    Returns (sorted class names, files sorted by relative path). Raises DataError for a missing
    folder, fewer than two classes, or a class folder with no files.
    """
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist; pass a folder holding one subfolder "
                        f"of images per class")
    entries = _visible_subdirs(root)
    split_dirs = {SPLIT_FOLDER_NAMES[name.lower()]: name for name in entries
                  if name.lower() in SPLIT_FOLDER_NAMES}
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"{root} has split folders {sorted(split_dirs.values())} but no "
                            f"train/; add train/<class>/ folders or use plain class folders")
        files = []
        for split, name in sorted(split_dirs.items()):
            files.extend(_class_files(os.path.join(root, name), root, split))
        classes = sorted(_visible_subdirs(os.path.join(root, split_dirs["train"])))
        extra = sorted({f.label for f in files} - set(classes))
        if extra:
            raise DataError(f"class {extra[0]!r} has images in val/test but no train/{extra[0]}/ "
                            f"folder in {root}; add training images for it or remove it")
    else:
        files = _class_files(root, root, None)
        classes = sorted(entries)
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s) {classes}; a classifier needs "
                        f"at least two: put each class's images in its own subfolder")
    for label in classes:
        if not any(f.label == label for f in files):
            raise DataError(f"class folder {label!r} in {root} has no files; add images or "
                            f"remove the folder")
    return classes, sorted(files, key=lambda f: f.relpath)


def listing_fingerprint(root: str) -> str:
    """A cheap fingerprint of what `root` holds now (sha256 hex of each candidate file's relative
    path, size and modification time; no file is read). It changes when a file is added,
    removed, renamed or rewritten, so a cluster can key the ingest step's cache on it."""
    _, files = discover(root)
    digest = hashlib.sha256()
    for source in files:
        stat = os.stat(source.path)
        digest.update(f"{source.relpath}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _visible_subdirs(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def _class_files(folder: str, root: str, split: Optional[str]) -> list[SourceFile]:
    files = []
    for label in _visible_subdirs(folder):
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, label)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                _check_readable_name(path)
                files.append(SourceFile(path, os.path.relpath(path, root), label, split))
    return files


def _check_readable_name(path: str) -> None:
    """DataError for a file name that is not valid UTF-8 (it cannot be recorded in the
    manifest or shown) and for a symbolic link whose target is missing or loops."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise DataError(f"file {shown} has a name that is not valid UTF-8 (bytes shown as \\x..); "
                        f"rename it, e.g. with `convmv -f latin1 -t utf-8 --notest`") from None
    if os.path.islink(path) and not os.path.exists(path):
        raise DataError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist "
                        f"or links back to itself; remove the link or restore its target")


def hidden_folders(root: str) -> list[str]:
    """Folders directly under `root` whose names start with "." (never read as classes)."""
    return sorted(name for name in os.listdir(root)
                  if name.startswith(".") and os.path.isdir(os.path.join(root, name)))
