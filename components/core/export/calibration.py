"""Calibration images for full-integer quantization (TFLite INT8, ONNX Q/DQ INT8): a
class-stratified sample of the training split, never val or test.
"""

from __future__ import annotations

import numpy as np

from components.core.data import cache


def calibration_sample(images: np.ndarray, labels: np.ndarray, count: int,
                       seed: int) -> np.ndarray:
    """Up to `count` images drawn evenly across classes (round-robin over shuffled classes)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    order = [members[i] for i in range(max(map(len, per_class)))
             for members in per_class if i < len(members)]
    return images[np.array(order[:count], dtype=np.int64)]


def calibration_images(images_dir: str, config) -> np.ndarray:
    """export.calibration_samples class-stratified training images (never val or test)."""
    train_images, train_labels = cache.read_arrays(images_dir, "train")
    return calibration_sample(train_images, train_labels,
                              config.export.calibration_samples, config.data.seed)
