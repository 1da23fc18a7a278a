"""Finding a labelled image folder's classes and files (class folders, optionally inside
split folders), and fingerprinting its listing.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from components.core.errors import InputError

SPLITS = ("train", "val", "test")

PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # file names that need no quoting anywhere

SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class DataError(InputError):
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
    classes, found = _layout(root)
    files = sorted(found, key=lambda f: f.relpath)
    _check_classes(root, classes, collections.Counter(f.label for f in files))
    return classes, files


def listing_fingerprint(root: str) -> str:
    """A cheap fingerprint of what `root` holds now (sha256 hex of each candidate file's relative
    path, size and modification time, in the folder walk's order; no file is read), checking
    the layout as `discover` does. It changes when a file is added, removed, renamed or
    rewritten, so a cluster can key the ingest step's cache on it. Its memory is one folder's
    listing at a time, not the whole list of files."""
    classes, files = _layout(root)
    digest, counts = hashlib.sha256(), collections.Counter()
    for source in files:
        stat = os.stat(source.path)
        digest.update(f"{source.relpath}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        counts[source.label] += 1
    _check_classes(root, classes, counts)
    return digest.hexdigest()


def _layout(root: str) -> tuple[list[str], Iterator[SourceFile]]:
    """(sorted class names, the candidate files in a fixed walk order, found as they are
    iterated) of a folder of class folders, optionally inside split folders. DataError for a
    missing folder or split folders without train/."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist; pass a folder holding one subfolder "
                        f"of images per class")
    entries = _visible_subdirs(root)
    split_dirs = {SPLIT_FOLDER_NAMES[name.lower()]: name for name in entries
                  if name.lower() in SPLIT_FOLDER_NAMES}
    if not split_dirs:
        return sorted(entries), _class_files(root, root, None)
    if "train" not in split_dirs:
        raise DataError(f"{root} has split folders {sorted(split_dirs.values())} but no "
                        f"train/; add train/<class>/ folders or use plain class folders")
    files = itertools.chain.from_iterable(
        _class_files(os.path.join(root, name), root, split)
        for split, name in sorted(split_dirs.items()))
    return sorted(_visible_subdirs(os.path.join(root, split_dirs["train"]))), files


def _check_classes(root: str, classes: list[str], counts: collections.Counter) -> None:
    """DataError unless there are two classes or more, each with files (counts: files per
    label), and no label outside `classes` (a val/test class folder without train/ images)."""
    extra = sorted(set(counts) - set(classes))
    if extra:
        raise DataError(f"class {extra[0]!r} has images in val/test but no train/{extra[0]}/ "
                        f"folder in {root}; add training images for it or remove it")
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s) {classes}; a classifier needs "
                        f"at least two: put each class's images in its own subfolder")
    for label in classes:
        if not counts[label]:
            raise DataError(f"class folder {label!r} in {root} has no files; add images or "
                            f"remove the folder")


def _visible_subdirs(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def _class_files(folder: str, root: str, split: Optional[str]) -> Iterator[SourceFile]:
    """The files under each class folder of `folder`, class by class, each folder's entries
    in name order (hidden ones skipped); DataError for an unreadable name (see below)."""
    for label in _visible_subdirs(folder):
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, label)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                _check_readable_name(path)
                yield SourceFile(path, os.path.relpath(path, root), label, split)


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
