"""Calibration images for full-integer quantization (TFLite INT8, ONNX Q/DQ INT8): a
class-stratified sample of the training split, never val or test, drawn by index from the labels
and read without loading the split.
"""

from __future__ import annotations

import numpy as np

from components.core.data import cache


def calibration_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to `count` indices into `labels` (N,) drawn evenly across classes (round-robin over
    each class's members in a seeded random order)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    order = [members[i] for i in range(max(map(len, per_class), default=0))
             for members in per_class if i < len(members)]
    return np.array(order[:count], dtype=np.int64)


def calibration_images(images_dir: str, count: int, seed: int) -> np.ndarray:
    """`count` class-stratified training images (never val or test) drawn with `seed`, uint8
    (K, S, S, 3): memory for those K images, whatever the split's size."""
    train = cache.SplitImages(images_dir, "train")
    return train[calibration_indices(train.labels, count, seed)]
