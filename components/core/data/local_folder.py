"""Where a source's files land locally: the folder of class folders inside wrappers, paths that
stay inside it, and error messages that name the user's source rather than a scratch folder.
"""

from __future__ import annotations

import contextlib
import os

from components.core.data.discovery import SPLIT_FOLDER_NAMES, DataError


def content_root(folder: str) -> str:
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


def safe_join(root: str, relative: str, where: str) -> str:
    """root/relative, refusing names that are absolute or climb out with '..'."""
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith(("/", "\\")) or ".." in parts or any(":" in p for p in parts[:1]):
        raise DataError(f"entry {relative!r} of {where} would be written outside the target "
                        f"folder; remove it from the source")
    return os.path.join(root, *[p for p in parts if p not in ("", ".")])
