"""A source URI parsed into its kind (folder, gcs, archive, tfds) and parts."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from components.core.data.archives import ARCHIVE_SUFFIXES
from components.core.data.discovery import DataError
from components.core.io import storage


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
