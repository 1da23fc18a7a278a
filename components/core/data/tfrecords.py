"""The dataset artifact's TFRecord shards: writing checked images, reading a split back."""

from __future__ import annotations

import hashlib
import os

from components.core.data.discovery import DataError
from components.core.data.image_check import CheckedImage, rgb_bytes
from components.core.io import storage

MANIFEST = "manifest.json"  # the dataset artifact's description of its splits


def write_shards(directory: str, split: str, members: list[CheckedImage], classes: list[str],
                 shard_size: int) -> list[str]:
    """Writes `members` as TFRecord shards of at most `shard_size` records; returns file names."""
    import tensorflow as tf

    names, writer = [], None
    index = {label: i for i, label in enumerate(classes)}
    for number, member in enumerate(members):
        if number % shard_size == 0:
            if writer:
                writer.close()
            names.append(f"{split}-{len(names):05d}.tfrecord")
            writer = tf.io.TFRecordWriter(os.path.join(directory, names[-1]))
        if member.conversion:
            content = rgb_bytes(member.source.path)
        else:
            with open(member.source.path, "rb") as handle:
                content = handle.read()
            if hashlib.sha256(content).hexdigest() != member.sha256:
                raise DataError(f"{member.source.relpath} changed while it was being ingested; "
                                f"run ingest again once the source is stable")
        writer.write(_example(content, index[member.source.label], member).SerializeToString())
    if writer:
        writer.close()
    return names


def _example(content: bytes, label: int, member: CheckedImage):
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(content), "label": feature(label),
        "sha256": feature(member.sha256.encode()),
        "source": feature(member.source.relpath.encode())}))


def read_split(dataset_dir: str, split: str):
    """tf.data.Dataset of (uint8 image (H, W, 3), int64 label) for one split of an ingested
    dataset, in manifest order."""
    import tensorflow as tf

    manifest = storage.read_json(os.path.join(dataset_dir, MANIFEST))
    paths = [os.path.join(dataset_dir, name) for name in manifest["shards"][split]]
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        return image, example["label"]

    return tf.data.TFRecordDataset(paths).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
