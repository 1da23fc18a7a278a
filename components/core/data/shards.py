"""The fine-tuning input: the training cache split into files, and each worker's share of every
epoch's batches.

The resized-image cache writes a training split of N images as K = `cache.train_file_count(N)`
files, image i in file i % K. The split is stored in a seeded random order
(`splitting.training_order`), so every file holds a sample of every class, and reading the
files one record from each in turn gives the split back in its order.

An epoch's global batch of G images is made of S = gcd(K, G) streams: stream s reads the files
s, s + S, ..., shuffles them with its own seed and contributes G / S images to every batch,
augmented with seeds of (data seed, epoch, batch number, stream). Worker w of W reads only the
streams of its contiguous block [w S / W, (w + 1) S / W): its own files, in parallel. The
global batch is the streams' batches side by side in stream order, whatever the number of
workers, so one worker and eight train on the same batches (up to the order float sums are
taken in). Every stream drops its last partial batch (fewer than G images per epoch, different
ones each epoch), so every worker runs the same number of steps.

A split that is one file, or whose batch and worker count cannot be divided this way, is read
whole by every worker, and each keeps its share of every global batch (`whole_split_epoch`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable, Iterable

from components.core.config.schema import AugmentConfig
from components.core.data import cache
from components.core.io import storage


# Images the shuffle buffers of an epoch hold in all (split between the streams).
SHUFFLE_IMAGES = 4096

# Seed offset of stream s: s * STREAM_SEED_STRIDE in augmentation seeds, s << SHUFFLE_SEED_SHIFT
# in shuffle seeds (stream 0 has the seeds of a one-file split).
STREAM_SEED_STRIDE = 2 ** 40
SHUFFLE_SEED_SHIFT = 56


@dataclasses.dataclass(frozen=True)
class Epochs:
    """What fine-tuning trains on: batches(epoch) -> the distributed global batches of that
    epoch (0-based), steps_per_epoch of them; `how` says how the split is read (for reports)."""

    batches: Callable[[int], Iterable]
    steps_per_epoch: int
    how: dict


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """How a training split in several files is read: `streams` streams, each giving
    `stream_batch` images to each of `steps` global batches, over `workers` workers."""

    streams: int
    stream_batch: int
    steps: int
    workers: int

    def worker_streams(self, worker: int) -> range:
        """The streams worker `worker` (0-based) reads: a contiguous block."""
        share = self.streams // self.workers
        return range(worker * share, (worker + 1) * share)


def stream_plan(file_counts: list[int], batch_size: int, workers: int,
                replicas_per_worker: int) -> StreamPlan | None:
    """The stream plan for a split of len(file_counts) files holding file_counts images each,
    a global batch of batch_size images, `workers` workers of `replicas_per_worker` devices.
    None when the split must be read whole by every worker: one file, fewer streams than two or
    not a multiple of the workers, a worker's share of the batch not divisible by its devices,
    or fewer images in a stream than one batch."""
    streams = math.gcd(len(file_counts), batch_size)
    if (streams < 2 or streams % workers
            or (batch_size // workers) % replicas_per_worker):
        return None
    stream_batch = batch_size // streams
    steps = min(sum(file_counts[stream::streams]) for stream in range(streams)) // stream_batch
    return StreamPlan(streams, stream_batch, steps, workers) if steps else None


def batches_per_epoch(train_images: int, batch_size: int,
                      replicas: int = 1) -> tuple[int, bool]:
    """(batches per epoch of a split read whole, whether the last partial batch is dropped).
    The last batch is dropped when it has fewer images than `replicas` (the devices a strategy
    splits each global batch over, >= 1): one replica would get an empty batch. The images it
    leaves out differ every epoch (the order is reshuffled)."""
    remainder = train_images % batch_size
    drop = 0 < remainder < replicas
    return train_images // batch_size + (0 if drop or not remainder else 1), drop


def training_epochs(strategy, images_dir: str, batch_size: int, seed: int,
                    augmentation: AugmentConfig, workers: int) -> Epochs:
    """The fine-tuning input of the resized-image cache in images_dir under `strategy` (its
    num_replicas_in_sync devices over `workers` worker processes): by file streams when
    `stream_plan` allows, else the whole split on every worker. batch_size: global, in images.
    seed: the data seed; the same seeds give the same batches, and a run resumed at an epoch
    sees that epoch's batches."""
    meta = storage.read_json(os.path.join(images_dir, cache.META))
    file_counts = meta.get("train_file_counts", [meta["counts"]["train"]])
    replicas = strategy.num_replicas_in_sync
    plan = stream_plan(file_counts, batch_size, workers, replicas // workers)
    how = {"train_files": len(file_counts), "streams": plan.streams if plan else 1,
           "read_by_each_worker": "its own files" if plan else "the whole split"}
    if plan is None:
        steps, _ = batches_per_epoch(sum(file_counts), batch_size, replicas)
        return Epochs(lambda epoch: strategy.experimental_distribute_dataset(whole_split_epoch(
            images_dir, batch_size, seed, augmentation, epoch, replicas)), steps, how)

    def worker_batches(epoch: int, context):
        """This worker's part of the epoch (context: its tf.distribute.InputContext), in
        per-device batches."""
        if context.num_input_pipelines != plan.workers:
            raise RuntimeError(f"{context.num_input_pipelines} input pipelines for a plan "
                               f"of {plan.workers} workers")
        return worker_epoch(images_dir, plan, context.input_pipeline_id, seed, augmentation,
                            epoch).rebatch(batch_size // replicas)

    return Epochs(lambda epoch: strategy.distribute_datasets_from_function(
        functools.partial(worker_batches, epoch)), plan.steps, how)


def whole_split_epoch(images_dir: str, batch_size: int, seed: int,
                      augmentation: AugmentConfig, epoch: int, replicas: int = 1):
    """Epoch `epoch`'s global batches of the whole split: shuffled and augmented from seeds of
    (seed, epoch) only. replicas: see `batches_per_epoch`."""
    train_images = storage.read_json(os.path.join(images_dir, cache.META))["counts"]["train"]
    _, drop = batches_per_epoch(train_images, batch_size, replicas)
    batches = cache.read_resized(images_dir, "train").shuffle(
        SHUFFLE_IMAGES, seed=_shuffle_seed(seed, epoch, 0)).batch(batch_size,
                                                                  drop_remainder=drop)
    return _augmented(batches.enumerate(), seed, augmentation, epoch, [0]).prefetch(2)


def worker_epoch(images_dir: str, plan: StreamPlan, worker: int, seed: int,
                 augmentation: AugmentConfig, epoch: int):
    """Worker `worker`'s part of epoch `epoch`'s global batches: plan.steps batches of
    plan.stream_batch images from each of its streams, side by side in stream order, read from
    its own files only."""
    import tensorflow as tf

    paths = cache.split_paths(images_dir, "train")
    streams = plan.worker_streams(worker)
    batches = tf.data.Dataset.zip(tuple(
        cache.read_resized(images_dir, "train", paths[stream::plan.streams])
        .shuffle(max(1, SHUFFLE_IMAGES // plan.streams), seed=_shuffle_seed(seed, epoch, stream))
        .batch(plan.stream_batch, drop_remainder=True)
        for stream in streams)).take(plan.steps)
    side_by_side = batches.map(lambda *parts: (tf.concat([part[0] for part in parts], 0),
                                               tf.concat([part[1] for part in parts], 0)))
    return _augmented(side_by_side.enumerate(), seed, augmentation, epoch, streams).prefetch(2)


def _augmented(numbered_batches, seed: int, augmentation: AugmentConfig, epoch: int,
               streams: Iterable[int]):
    """Maps (batch number, (images, labels)) whose images are equal parts from `streams` to
    augmented (images, labels): each part's views drawn from its stream's seed."""
    import tensorflow as tf

    from components.core.data.preprocessing import augment_draws, crop_views

    streams = list(streams)

    def views(number, batch):
        images, labels = batch
        part = tf.shape(images)[0] // len(streams)
        draws = tf.concat([augment_draws(tf.stack([
            tf.constant(seed + 1 + stream * STREAM_SEED_STRIDE, tf.int64),
            epoch * cache.AUGMENT_SEED_STRIDE + number]), part) for stream in streams], axis=1)
        return crop_views(images, draws, augmentation.min_crop_scale, augmentation.flip), labels

    return numbered_batches.map(views)


def _shuffle_seed(seed: int, epoch: int, stream: int) -> int:
    return seed * cache.AUGMENT_SEED_STRIDE + epoch + (stream << SHUFFLE_SEED_SHIFT)
