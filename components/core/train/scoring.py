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
    return summary(per_example(predict, dataset))


def per_example(predict, dataset) -> dict:
    """Per-image results on a batched (images, labels) dataset, in its order: {"losses":
    cross-entropy in nats float64 (N,), "correct": top-1 right bool (N,)}."""
    probabilities, labels = [], []
    for images, batch_labels in dataset:
        probabilities.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
    probabilities, labels = np.concatenate(probabilities), np.concatenate(labels)
    return {"losses": cross_entropies(probabilities, labels),
            "correct": probabilities.argmax(1) == labels}


def summary(examples: dict) -> dict:
    """{"loss": mean cross-entropy, "accuracy"} of `per_example` results."""
    return {"loss": float(np.mean(examples["losses"])),
            "accuracy": float(np.mean(examples["correct"]))}


def inference(model: keras.Model):
    """model(images, training=False) as a tf.function (traced once per batch shape)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def predict(images):
        return model(images, training=False)

    return predict


def cross_entropies(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's cross-entropy in nats, float64 (N,), of probabilities (N, C) at its label."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return -np.log(picked.astype(np.float64))


def scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy) of predicted probabilities (N, C)."""
    return (float(np.mean(cross_entropies(probabilities, labels))),
            float(np.mean(probabilities.argmax(1) == labels)))
