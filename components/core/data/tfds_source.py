"""TensorFlow Datasets as a data source: `tfds:NAME?split=...` exported to class folders."""

from __future__ import annotations

import os

from components.core.data.discovery import DataError
from components.core.data.source_uri import Source

TFDS_DOWNLOAD_HOST = "storage.googleapis.com"  # TFDS's mirror of prepared datasets


def tfds_builder(source: Source):
    """The TFDS builder of `source` (not downloaded); DataError when TFDS is missing or has no
    such dataset."""
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


def require_tfds_download(source: Source) -> None:
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

    builder = tfds_builder(source)
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
