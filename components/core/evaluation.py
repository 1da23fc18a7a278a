"""Metrics on the test split and the blessing decision. Pure numpy."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64),
                       np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and the confusion matrix.

    labels: int (N,); probabilities: float (N, C). Precision of a class never predicted, and
    recall of a class with no examples, are 0 (as scikit-learn's zero_division=0).
    """
    predictions = np.argmax(probabilities, axis=1)
    matrix = confusion_matrix(labels, predictions, len(classes))
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive),
                          where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive),
                   where=denominator > 0)
    return {
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(actual[i])}
                      for i, name in enumerate(classes)},
        "confusion_matrix": matrix.tolist(),
        "examples": int(len(labels)),
    }


def bless(accuracy: float, min_accuracy: float) -> tuple[bool, str]:
    """Blessed when test accuracy reaches `min_accuracy` (both in [0, 1]). Returns (blessed,
    reason)."""
    if accuracy >= min_accuracy:
        return True, f"test accuracy {accuracy:.4f} >= minimum {min_accuracy:.4f}"
    return False, f"test accuracy {accuracy:.4f} < minimum {min_accuracy:.4f}: not exported"
