"""The preprocess step's caches: images resized once to the backbone's input size, and the frozen
backbone's features of the training and validation images.

Nothing here depends on the training stages' settings (only on data, model and augment), so it
is computed once per dataset and backbone, not once per training run.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from components.core import data, storage
from components.core.config import AugmentConfig
from components.core.preprocessing import augment, resize_images, to_uint8
from components.core.progress import Progress

log = logging.getLogger("tlpipe.cache")

META = "meta.json"
FEATURES = "features.npz"
BATCH = 64
# Augmentation seeds are (seed, pass * AUGMENT_SEED_STRIDE + batch number): one stream per
# feature view or fine-tuning epoch, up to 2**20 batches each.
AUGMENT_SEED_STRIDE = 2 ** 20


def write_resized(dataset_dir: str, output_dir: str, image_size: int) -> dict:
    """Resizes every split of an ingested dataset to image_size x image_size uint8 RGB, written
    atomically as `<split>.tfrecord` (raw pixels + label) plus `meta.json`. Returns the meta."""
    import tensorflow as tf

    manifest = storage.read_json(os.path.join(dataset_dir, data.MANIFEST))
    counts = {}
    with storage.atomic_dir(output_dir) as partial:
        for split in data.SPLITS:
            progress = Progress(log, f"resized {split} images to {image_size} px",
                                sum(manifest["counts"][split].values()))
            with tf.io.TFRecordWriter(os.path.join(partial, f"{split}.tfrecord")) as writer:
                for image, label in data.read_split(dataset_dir, split).map(
                        lambda image, label: (_resize_one(image, image_size), label)):
                    writer.write(_resized_example(image.numpy(), int(label)))
                    progress.advance()
            counts[split] = progress.done
        meta = {"image_size": image_size, "classes": manifest["classes"], "counts": counts,
                "train_class_counts": [manifest["counts"]["train"][label]
                                       for label in manifest["classes"]],
                "fingerprint": manifest["fingerprint"]}
        storage.write_json(os.path.join(partial, META), meta)
    return meta


def _resize_one(image, image_size: int):
    return to_uint8(resize_images(image[None], image_size))[0]


def _resized_example(pixels: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def read_resized(images_dir: str, split: str):
    """tf.data.Dataset of (uint8 (S, S, 3), int64 label) from `write_resized` output."""
    import tensorflow as tf

    size = storage.read_json(os.path.join(images_dir, META))["image_size"]
    spec = {"pixels": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        pixels = tf.reshape(tf.io.decode_raw(example["pixels"], tf.uint8), (size, size, 3))
        return pixels, example["label"]

    return tf.data.TFRecordDataset(os.path.join(images_dir, f"{split}.tfrecord")).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE)


def read_arrays(images_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as numpy (images uint8 (N, S, S, 3), labels int64 (N,))."""
    images, labels = [], []
    for batch_images, batch_labels in read_resized(images_dir, split).batch(256):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def compute_features(feature_extractor, images_dir: str, output_dir: str,
                     augment_config: AugmentConfig, seed: int, classes: list[str]) -> dict:
    """Runs the frozen feature extractor once over val and over train plus `augment_config.views`
    augmented views of it, saving `features.npz` with {split}_features float32 (N, D) and
    {split}_labels, and `meta.json` with `classes`. Returns {"feature_seconds": wall time of
    the passes, "views": train views including the original, "feature_dim": D}."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def extract(images, view_seed, augmented: bool):  # one graph per value of `augmented`
        if augmented:
            images = augment(images, view_seed, augment_config.min_crop_scale,
                             augment_config.flip)
        return feature_extractor(images, training=False)

    arrays, started = {}, time.monotonic()
    for split in ("train", "val"):
        dataset = read_resized(images_dir, split).batch(BATCH)
        views = 1 + (augment_config.views if split == "train" else 0)
        count = storage.read_json(os.path.join(images_dir, META))["counts"][split]
        progress = Progress(log, f"features of {split} ({views} view(s) per image)", views * count)
        features, labels = [], []
        for view in range(views):
            for number, (images, batch_labels) in enumerate(dataset):
                view_seed = tf.constant([seed, view * AUGMENT_SEED_STRIDE + number], tf.int64)
                features.append(extract(images, view_seed, view > 0).numpy())
                labels.append(batch_labels.numpy())
                progress.advance(len(labels[-1]))
        arrays[f"{split}_features"] = np.concatenate(features).astype(np.float32)
        arrays[f"{split}_labels"] = np.concatenate(labels)
        log.info("features of %s: %s", split, arrays[f"{split}_features"].shape)
    facts = {"feature_seconds": time.monotonic() - started, "views": 1 + augment_config.views,
             "feature_dim": int(arrays["train_features"].shape[1])}
    with storage.atomic_dir(output_dir) as partial:
        np.savez(os.path.join(partial, FEATURES), **arrays)
        storage.write_json(os.path.join(partial, META), {"classes": classes, **facts})
    return facts


def load_features(features_dir: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(features_dir, FEATURES)) as arrays:
        return {name: arrays[name] for name in arrays.files}
