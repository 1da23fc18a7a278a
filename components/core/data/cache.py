"""The preprocess step's caches: images resized once to the backbone's input size, and the frozen
backbone's features of the training and validation images.

Nothing here depends on the training stages' settings (only on data, model and augment), so it
is computed once per dataset and backbone, not once per training run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import time

import numpy as np

from components.core.config.schema import AugmentConfig
from components.core.data import discovery, tfrecords
from components.core.io import storage
from components.core.io.arrays import load_npz_aligned
from components.core.io.progress import Progress


log = logging.getLogger("tlpipe.cache")

META = "meta.json"

FEATURES = "features.npz"

BATCH = 64

# Augmentation seeds are (seed, pass * AUGMENT_SEED_STRIDE + batch number): one stream per
# feature view or fine-tuning epoch, up to 2**20 batches each.
AUGMENT_SEED_STRIDE = 2 ** 20

# The training split is cached as one file per this many images (a power of two of files, at
# most MAX_TRAIN_FILES): 10,000 training images are one file, 40,000 four, 131,072 or more
# sixteen. Other splits are one file.
IMAGES_PER_FILE = 8192
MAX_TRAIN_FILES = 16

# Decoded, resized batches may run this far ahead of their consumer (bytes of uint8 pixels).
PREFETCH_BYTES = 256 * 2 ** 20


def start_resizing(dataset_dir: str, image_size: int):
    """Starts decoding every split of an ingested dataset and resizing it to image_size x
    image_size uint8 RGB, in background threads (tf.data's, up to PREFETCH_BYTES ahead), so
    that decoding overlaps whatever the caller does next (building the backbone, tracing it).

    Returns an iterator of (split, images uint8 (B, S, S, 3), labels int64 (B,)) numpy
    batches of at most BATCH images, split by split in `discovery.SPLITS` order, each split in
    manifest order.
    """
    requester = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    started = requester.submit(_first_batch, dataset_dir, image_size)
    requester.shutdown(wait=False)
    return _named_splits(started)


def _first_batch(dataset_dir: str, image_size: int):
    """Builds start_resizing's pipeline and requests its first batch (tf.data starts its
    threads on the first request). Returns (first batch, iterator over the rest)."""
    import tensorflow as tf

    def split_batches(split):
        return _resized(tfrecords.read_split(dataset_dir, split), image_size).batch(BATCH).map(
            lambda images, labels: (tf.constant(split), images, labels))

    batches = split_batches(discovery.SPLITS[0])
    for split in discovery.SPLITS[1:]:
        batches = batches.concatenate(split_batches(split))
    ahead = max(1, PREFETCH_BYTES // (BATCH * image_size * image_size * 3))
    iterator = batches.prefetch(ahead).as_numpy_iterator()
    return next(iterator), iterator


def _named_splits(started: concurrent.futures.Future):
    first, rest = started.result()
    for split, images, labels in itertools.chain([first], rest):
        yield split.decode(), images, labels


def write_resized(batches, dataset_dir: str, output_dir: str, image_size: int,
                  on_batch=None) -> dict:
    """Writes the batches of `start_resizing` atomically as TFRecord files of raw pixels +
    label (`split_files`: the training split in `train_file_count` files, image i in file
    i % count; other splits one file each) plus `meta.json`, calling on_batch(split, images,
    labels) on each batch once it is written. Returns the meta."""
    manifest = storage.read_json(os.path.join(dataset_dir, tfrecords.MANIFEST))
    totals = {split: sum(manifest["counts"][split].values()) for split in discovery.SPLITS}
    names = split_files(train_file_count(totals["train"]))
    writers, progress = {}, {}
    with storage.atomic_dir(output_dir) as partial:
        with contextlib.ExitStack() as open_files:
            for split, images, labels in batches:
                if split not in writers:
                    writers[split] = open_files.enter_context(
                        RoundRobinWriter(partial, names[split]))
                    progress[split] = Progress(log, f"resized {split} images to {image_size} px",
                                               totals[split])
                for pixels, label in zip(images, labels):
                    writers[split].write(_resized_example(pixels, int(label)))
                progress[split].advance(len(labels))
                if on_batch is not None:
                    on_batch(split, images, labels)
        meta = {"image_size": image_size, "classes": manifest["classes"],
                "counts": {split: progress[split].done for split in discovery.SPLITS},
                "train_class_counts": [manifest["counts"]["train"][label]
                                       for label in manifest["classes"]],
                "files": names, "train_file_counts": writers["train"].counts,
                "fingerprint": manifest["fingerprint"]}
        storage.write_json(os.path.join(partial, META), meta)
    return meta


def train_file_count(images: int) -> int:
    """Files a training split of `images` images is cached as: the largest power of two at most
    images / IMAGES_PER_FILE, within 1..MAX_TRAIN_FILES."""
    files = 1
    while files * 2 <= min(MAX_TRAIN_FILES, images // IMAGES_PER_FILE):
        files *= 2
    return files


def split_files(train_files: int) -> dict[str, list[str]]:
    """File names of every split: `<split>.tfrecord`, the training split in train_files files
    `train-00000-of-00004.tfrecord`... when more than one."""
    names = {split: [f"{split}.tfrecord"] for split in discovery.SPLITS}
    if train_files > 1:
        names["train"] = [f"train-{number:05d}-of-{train_files:05d}.tfrecord"
                          for number in range(train_files)]
    return names


class RoundRobinWriter:
    """Writes records to the files `names` in `directory` in turn: record i to file
    i % len(names). `counts`: records written to each file."""

    def __init__(self, directory: str, names: list[str]):
        import tensorflow as tf

        self._files = [tf.io.TFRecordWriter(os.path.join(directory, name)) for name in names]
        self.counts = [0] * len(names)
        self._next = 0

    def write(self, record: bytes) -> None:
        self._files[self._next].write(record)
        self.counts[self._next] += 1
        self._next = (self._next + 1) % len(self._files)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for handle in self._files:
            handle.close()


def split_paths(images_dir: str, split: str) -> list[str]:
    """The paths of one split's files, in write order (caches written before the training
    split had several files: `<split>.tfrecord`)."""
    names = storage.read_json(os.path.join(images_dir, META)).get("files", {}).get(
        split, [f"{split}.tfrecord"])
    return [os.path.join(images_dir, name) for name in names]


def _records(paths: list[str]):
    """tf.data.Dataset of the raw records of `paths` taken one from each file in turn (the
    split's order as `RoundRobinWriter` wrote it), the files read in parallel."""
    import tensorflow as tf

    if len(paths) == 1:
        return tf.data.TFRecordDataset(paths[0])
    return tf.data.Dataset.from_tensor_slices(paths).interleave(
        tf.data.TFRecordDataset, cycle_length=len(paths), block_length=1,
        num_parallel_calls=len(paths), deterministic=True)


def batchnorm_sample(dataset_dir: str, image_size: int, seed: int) -> np.ndarray:
    """BATCH training images drawn at random (seeded), resized: uint8 (B, S, S, 3)."""
    shuffled = tfrecords.read_split(dataset_dir, "train").shuffle(4096, seed=seed)
    images, _ = next(iter(_resized(shuffled, image_size).batch(BATCH)))
    return images.numpy()


def _resized(images_and_labels, image_size: int):
    """Maps a dataset of (uint8 image (H, W, 3), label) to (uint8 (S, S, 3), label)."""
    import tensorflow as tf

    from components.core.data.preprocessing import resize_images, to_uint8

    return images_and_labels.map(
        lambda image, label: (to_uint8(resize_images(image[None], image_size))[0], label),
        num_parallel_calls=tf.data.AUTOTUNE)


def _resized_example(pixels: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def read_resized(images_dir: str, split: str, paths: list[str] | None = None):
    """tf.data.Dataset of (uint8 (S, S, 3), int64 label) from `write_resized` output, in the
    split's order; paths: only these of the split's files (default: all)."""
    import tensorflow as tf

    size = storage.read_json(os.path.join(images_dir, META))["image_size"]
    spec = {"pixels": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        pixels = tf.reshape(tf.io.decode_raw(example["pixels"], tf.uint8), (size, size, 3))
        return pixels, example["label"]

    return _records(paths or split_paths(images_dir, split)).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE)


def read_labels(images_dir: str, split: str) -> np.ndarray:
    """One split's labels, int64 (N,), in cache order; the pixels are not decoded."""
    import tensorflow as tf

    spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    records = _records(split_paths(images_dir, split))
    # records hold their pixels: parsed 256 at a time, only the labels kept
    batches = records.batch(256).map(lambda batch: tf.io.parse_example(batch, spec)["label"])
    found = [labels for labels in batches.as_numpy_iterator()]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


class SplitImages:
    """One split of the resized cache as a read-only array of uint8 images (N, S, S, 3) that
    stays on disk: iterating, `batches` and indexing read the file in batches of
    `batch_size` images (default 128) each time, so memory holds one batch, the labels (N,)
    and what an index asks for; never the split. Indexing takes an int, a slice or an array
    of indices (one pass over the file, stopping after the last one asked for)."""

    def __init__(self, images_dir: str, split: str, batch_size: int = 128):
        self.images_dir, self.split, self.batch_size = images_dir, split, batch_size
        size = storage.read_json(os.path.join(images_dir, META))["image_size"]
        self.labels = read_labels(images_dir, split)
        self.shape = (len(self.labels), size, size, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int | None = None):
        """uint8 (B, S, S, 3) numpy batches, in cache order. Records are parsed a batch at a
        time in this thread with one batch read ahead: no tf.data autotuning, whose buffers
        (up to half the machine's memory) would grow with the consumer's slowness."""
        import tensorflow as tf

        size = self.shape[1]
        spec = {"pixels": tf.io.FixedLenFeature([], tf.string)}

        def parse(records):
            pixels = tf.io.decode_raw(tf.io.parse_example(records, spec)["pixels"], tf.uint8)
            return tf.reshape(pixels, (-1, size, size, 3))

        records = _records(split_paths(self.images_dir, self.split))
        yield from records.batch(batch_size or self.batch_size).map(parse).prefetch(1) \
            .as_numpy_iterator()

    def __iter__(self):
        for batch in self.batches():
            yield from batch

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        wanted = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(wanted) == 0:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        if wanted.min() < 0 or wanted.max() >= len(self):
            raise IndexError(f"index out of range for {len(self)} {self.split} images")
        found, offset, last = {}, 0, int(wanted.max())
        needed = set(wanted.tolist())
        for batch in self.batches():
            for position in range(offset, offset + len(batch)):
                if position in needed:
                    # a copy, not a view that would keep the whole batch alive
                    found[position] = batch[position - offset].copy()
            offset += len(batch)
            if offset > last:
                break
        return np.stack([found[position] for position in wanted.tolist()])


def read_arrays(images_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as numpy (images uint8 (N, S, S, 3), labels int64 (N,))."""
    images, labels = [], []
    for batch_images, batch_labels in read_resized(images_dir, split).batch(256):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


class FeatureCache:
    """The frozen feature extractor run once per image: over the original train and val images
    as `write_resized` hands them over (`add`), then over `augment_config.views` augmented
    views of the written train cache (`add_views`); `save` writes `features.npz` with
    {split}_features float32 (N, D) and {split}_labels (train: the originals, then view after
    view) and `meta.json` with `classes`.

    extractor: uint8 (B, S, S, 3) images -> (B, D) features (a Keras model, called with
    training=False). min_crop_scale: the views' smallest crop side share, in (0, 1] (resolved:
    `recipe.crop_scale`). Both graphs (original and augmented) are traced here, before any batch
    arrives, so that tracing overlaps the decoding started by `start_resizing`.
    """

    SPLITS = ("train", "val")

    def __init__(self, extractor, image_size: int, augment_config: AugmentConfig, seed: int,
                 min_crop_scale: float):
        import tensorflow as tf

        from components.core.data.preprocessing import augment

        images = tf.TensorSpec((None, image_size, image_size, 3), tf.uint8)
        self._original = tf.function(lambda batch: extractor(batch, training=False),
                                     input_signature=[images])
        self._augmented = tf.function(
            lambda batch, view_seed: extractor(
                augment(batch, view_seed, min_crop_scale, augment_config.flip),
                training=False),
            input_signature=[images, tf.TensorSpec((2,), tf.int64)])
        self._original.get_concrete_function()
        if augment_config.views:
            self._augmented.get_concrete_function()
        self._views, self._seed = augment_config.views, seed
        self._arrays = {split: ([], []) for split in self.SPLITS}
        self._seconds = 0.0

    def add(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Features of one batch of original images; batches of other splits are ignored."""
        if split in self._arrays:
            self._run(split, self._original, labels, images)

    def add_views(self, images_dir: str) -> None:
        """Features of the augmented views: seeds (seed, view * AUGMENT_SEED_STRIDE + batch
        number), so a view depends only on the seed and the image's place in the """
        import tensorflow as tf

        if not self._views:
            return
        count = storage.read_json(os.path.join(images_dir, META))["counts"]["train"]
        progress = Progress(log, f"features of {self._views} augmented view(s) of train",
                            self._views * count)
        for view in range(1, 1 + self._views):
            batches = read_resized(images_dir, "train").batch(BATCH)
            for number, (images, labels) in enumerate(batches):
                view_seed = tf.constant([self._seed, view * AUGMENT_SEED_STRIDE + number],
                                        tf.int64)
                self._run("train", self._augmented, labels.numpy(), images, view_seed)
                progress.advance(len(labels))

    def _run(self, split: str, graph, labels, *args) -> None:
        started = time.monotonic()
        self._arrays[split][0].append(graph(*args).numpy().astype(np.float32))
        self._arrays[split][1].append(labels)
        self._seconds += time.monotonic() - started

    def save(self, output_dir: str, classes: list[str]) -> dict:
        """Writes the cache atomically. Returns {"feature_seconds": time spent in the
        extractor, "views": train views including the original, "feature_dim": D}."""
        arrays = {}
        for split, (features, labels) in self._arrays.items():
            arrays[f"{split}_features"] = np.concatenate(features)
            arrays[f"{split}_labels"] = np.concatenate(labels)
            log.info("features of %s: %s", split, arrays[f"{split}_features"].shape)
        facts = {"feature_seconds": self._seconds, "views": 1 + self._views,
                 "feature_dim": int(arrays["train_features"].shape[1])}
        with storage.atomic_dir(output_dir) as partial:
            np.savez(os.path.join(partial, FEATURES), **arrays)
            storage.write_json(os.path.join(partial, META), {"classes": classes, **facts})
        return facts


def load_features(features_dir: str) -> dict[str, np.ndarray]:
    """The cached features and labels ({train,val}_{features,labels}), read into memory
    TensorFlow can use in place (`load_npz_aligned`): N x D x 4 bytes per split, once."""
    return load_npz_aligned(os.path.join(features_dir, FEATURES))
