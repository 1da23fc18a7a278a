"""Scoring a classifier during training: cross-entropy and accuracy of its predictions on a
batched dataset, computed the same way on every worker.
"""

from __future__ import annotations

import keras
import numpy as np


def evaluate(predict, dataset) -> dict:
    """{"loss": cross-entropy without regularisation penalties, "accuracy"} on a batched
    (images, labels) dataset; predict: images -> probabilities (see `inference`). Runs on this
    worker alone (every worker holds the same weights and reads all of `dataset`, so every
    worker gets the same figures and takes the same early-stopping decision)."""
    probabilities, labels = [], []
    for images, batch_labels in dataset:
        probabilities.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
    return dict(zip(("loss", "accuracy"), scores(np.concatenate(probabilities),
                                                 np.concatenate(labels))))


def inference(model: keras.Model):
    """model(images, training=False) as a tf.function (traced once per batch shape)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def predict(images):
        return model(images, training=False)

    return predict


def scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy) of predicted probabilities (N, C)."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.mean(np.log(picked))), float(np.mean(probabilities.argmax(1) == labels))
