"""Metrics on the test split and their confidence intervals.

scikit-learn computes what it has (confusion matrix, precision/recall/F1, ROC AUC and curve, log
loss, top-k accuracy); expected calibration error and the bootstrap intervals are computed here.
Conventions: labels are int class indices (N,); probabilities are float (N, C), rows summing to
1; scores in [0, 1]; "points" are percentage points (0.01 of accuracy is 1 point).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk

CALIBRATION_BINS = 15


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           classes: list[str]) -> dict:
    """Everything the evaluate step reports on one model's test predictions.

    Accuracy; top-k accuracy for k in (3, 5) when k < number of classes; macro and
    support-weighted F1; per-class precision/recall/F1/support (0 where undefined, as
    zero_division=0) and one-vs-rest ROC AUC; macro one-vs-rest ROC AUC over the classes that have
    both positives and negatives; log loss (natural log); expected calibration error over 15
    equal-width confidence bins with the bins themselves (a reliability diagram); the confusion
    matrix (rows true classes, columns predictions).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = np.argmax(probabilities, axis=1)
    every_class = np.arange(len(classes))
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, predictions, labels=every_class, zero_division=0)
    aucs = [one_vs_rest_auc(probabilities[:, i], labels == i) for i in every_class]
    defined = [auc for auc in aucs if auc is not None]
    metrics = {
        "accuracy": float(sk.accuracy_score(labels, predictions)) if len(labels) else 0.0,
        "macro_f1": float(f1.mean()),
        "weighted_f1": float(np.average(f1, weights=support)) if support.sum() else 0.0,
        "roc_auc_ovr": float(np.mean(defined)) if defined else None,
        "log_loss": float(sk.log_loss(labels, probabilities, labels=every_class)),
        **calibration(labels, probabilities),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i]), "roc_auc": aucs[i]}
                      for i, name in enumerate(classes)},
        "confusion_matrix": sk.confusion_matrix(labels, predictions,
                                                labels=every_class).tolist(),
        "examples": int(len(labels)),
    }
    for k in (3, 5):
        if k < len(classes):
            metrics[f"top_{k}_accuracy"] = float(sk.top_k_accuracy_score(
                labels, probabilities, k=k, labels=every_class))
    return metrics


def one_vs_rest_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for the boolean `positives` (ties count half);
    None when there are no positives or no negatives (the AUC is undefined)."""
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return None
    return float(sk.roc_auc_score(positives, scores))


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> dict:
    """ROC points {"fpr", "tpr", "thresholds"} (lists), one per distinct score from the highest,
    after a first point (0, 0) whose threshold is the next float above the highest score
    (scikit-learn's is infinity, which JSON cannot hold)."""
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thresholds = sk.roc_curve(np.asarray(positives, dtype=bool), scores,
                                        drop_intermediate=False)
    thresholds[0] = np.nextafter(scores.max(), np.inf)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def calibration(labels: np.ndarray, probabilities: np.ndarray,
                bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error: the example-weighted mean |accuracy - confidence| over equal-
    width bins of the top probability (confidence in (0, 1]), and the non-empty bins as
    {"lower", "upper", "count", "confidence", "accuracy"}."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table, error = [], 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            error += gap * members.sum() / len(labels)
            table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]),
                          "count": int(members.sum()),
                          "confidence": float(confidence[members].mean()),
                          "accuracy": float(correct[members].mean())})
    return {"expected_calibration_error": float(error), "reliability": table}


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray, samples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals (test examples resampled with replacement `samples`
    times) for accuracy and macro F1: {"accuracy": [low, high], "macro_f1": [low, high]}.
    Each resample's confusion matrix is one bincount (a scikit-learn call per resample would
    cost about a millisecond each)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.argmax(probabilities, axis=1)
    num_classes = probabilities.shape[1]
    rng = np.random.default_rng(seed)
    accuracy, macro_f1 = np.empty(samples), np.empty(samples)
    for i in range(samples):
        pick = rng.integers(0, len(labels), len(labels))
        matrix = np.bincount(labels[pick] * num_classes + predictions[pick],
                             minlength=num_classes ** 2).reshape(num_classes, num_classes)
        accuracy[i] = np.trace(matrix) / len(labels)
        macro_f1[i] = _macro_f1(matrix)
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
            for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1))}


def _macro_f1(matrix: np.ndarray) -> float:
    """Mean over classes of F1 = 2 TP / (predicted + actual) from a confusion matrix; 0 for a
    class neither present nor predicted (scikit-learn's zero_division=0)."""
    true_positive = np.diag(matrix).astype(np.float64)
    both = matrix.sum(axis=0) + matrix.sum(axis=1)
    return float(np.mean(np.divide(2 * true_positive, both, out=np.zeros_like(true_positive),
                                   where=both > 0)))


def most_confidently_wrong(labels: np.ndarray, probabilities: np.ndarray, count: int) -> list:
    """Indices of up to `count` misclassified examples, highest wrong confidence first."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    return wrong[np.argsort(-probabilities[wrong].max(axis=1), kind="stable")][:count].tolist()


