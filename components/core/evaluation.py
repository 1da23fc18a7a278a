"""Metrics on the test split, confidence intervals and the blessing decision. Pure numpy.

Conventions: labels are int class indices (N,); probabilities are float (N, C), rows summing to
1; scores in [0, 1]; "points" are percentage points (0.01 of accuracy is 1 point).
"""

from __future__ import annotations

import numpy as np

CALIBRATION_BINS = 15
LOG_LOSS_FLOOR = 1e-15


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64),
                       np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix. Precision of a class
    never predicted, and recall of a class with no examples, are 0 (scikit-learn's
    zero_division=0)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    zeros = np.zeros_like(true_positive)
    precision = np.divide(true_positive, predicted, out=zeros.copy(), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=zeros.copy(), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=zeros.copy(),
                   where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           classes: list[str]) -> dict:
    """Everything the evaluate step reports on one model's test predictions.

    Accuracy; top-k accuracy for k in (3, 5) when k < number of classes; macro and
    support-weighted F1; per-class precision/recall/F1/support and one-vs-rest ROC AUC; macro
    one-vs-rest ROC AUC over the classes that have both positives and negatives; log loss
    (natural log, probabilities floored at 1e-15); expected calibration error over 15 equal-width
    confidence bins with the bins themselves (a reliability diagram); the confusion matrix.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = np.argmax(probabilities, axis=1)
    matrix = confusion_matrix(labels, predictions, len(classes))
    scores = per_class_scores(matrix)
    aucs = [one_vs_rest_auc(probabilities[:, i], labels == i) for i in range(len(classes))]
    defined = [auc for auc in aucs if auc is not None]
    support = scores["support"]
    metrics = {
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
        "macro_f1": float(scores["f1"].mean()),
        "weighted_f1": float(np.average(scores["f1"], weights=support)) if support.sum() else 0.0,
        "roc_auc_ovr": float(np.mean(defined)) if defined else None,
        "log_loss": log_loss(labels, probabilities),
        **calibration(labels, probabilities),
        "per_class": {name: {"precision": float(scores["precision"][i]),
                             "recall": float(scores["recall"][i]), "f1": float(scores["f1"][i]),
                             "support": int(support[i]), "roc_auc": aucs[i]}
                      for i, name in enumerate(classes)},
        "confusion_matrix": matrix.tolist(),
        "examples": int(len(labels)),
    }
    for k in (3, 5):
        if k < len(classes):
            metrics[f"top_{k}_accuracy"] = top_k_accuracy(labels, probabilities, k)
    return metrics


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the k highest probabilities."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative natural log of the probability given to the true class (floored at 1e-15)."""
    true_class = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(true_class, LOG_LOSS_FLOOR, 1.0))))


def one_vs_rest_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for the boolean `positives` (ties count half);
    None when there are no positives or no negatives."""
    positives = np.asarray(positives, dtype=bool)
    count, others = int(positives.sum()), int((~positives).sum())
    if count == 0 or others == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - count * (count + 1) / 2) / (count * others))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> dict:
    """ROC points {"fpr", "tpr", "thresholds"} (lists), one per distinct score from the highest,
    after a first point (0, 0) at a threshold just above the highest score."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positives[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_positives = np.cumsum(hits)[last_of_each]
    false_positives = (last_of_each + 1) - true_positives
    start = float(np.nextafter(sorted_scores[0], np.inf))
    return {"fpr": [0.0, *(false_positives / max((~positives).sum(), 1)).tolist()],
            "tpr": [0.0, *(true_positives / max(positives.sum(), 1)).tolist()],
            "thresholds": [start, *sorted_scores[last_of_each].tolist()]}


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
    times) for accuracy and macro F1: {"accuracy": [low, high], "macro_f1": [low, high]}."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.argmax(probabilities, axis=1)
    num_classes = probabilities.shape[1]
    rng = np.random.default_rng(seed)
    accuracy, macro_f1 = np.empty(samples), np.empty(samples)
    for i in range(samples):
        pick = rng.integers(0, len(labels), len(labels))
        matrix = confusion_matrix(labels[pick], predictions[pick], num_classes)
        accuracy[i] = np.trace(matrix) / len(labels)
        macro_f1[i] = per_class_scores(matrix)["f1"].mean()
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
            for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1))}


def most_confidently_wrong(labels: np.ndarray, probabilities: np.ndarray, count: int) -> list:
    """Indices of up to `count` misclassified examples, highest wrong confidence first."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    return wrong[np.argsort(-probabilities[wrong].max(axis=1), kind="stable")][:count].tolist()


def bless(candidate: dict, evaluate_config, baseline: dict | None = None) -> tuple[bool, list]:
    """TFX-Evaluator-style blessing of `candidate` metrics (from classification_metrics).

    Absolute rules: accuracy >= evaluate_config.min_accuracy and every class's recall >=
    min_class_recall. With `baseline` (the production model's metrics on the same test split):
    accuracy at most baseline_margin points below the baseline's, and no class's recall more
    than max_recall_drop points below the baseline's. Returns (blessed, checks) where each check
    is {"rule", "passed", "detail"}.
    """
    checks = []

    def check(rule: str, passed: bool, detail: str) -> None:
        checks.append({"rule": rule, "passed": bool(passed), "detail": detail})

    accuracy, minimum = candidate["accuracy"], evaluate_config.min_accuracy
    check("min_accuracy", accuracy >= minimum,
          f"test accuracy {accuracy:.4f} {'>=' if accuracy >= minimum else '<'} minimum "
          f"{minimum:.4f}")
    recalls = {name: scores["recall"] for name, scores in candidate["per_class"].items()}
    worst = min(recalls, key=recalls.get)
    check("min_class_recall", recalls[worst] >= evaluate_config.min_class_recall,
          f"lowest class recall {recalls[worst]:.4f} ({worst}) vs minimum "
          f"{evaluate_config.min_class_recall:.4f}")
    if baseline is None:
        check("baseline", True, "no baseline model given: absolute thresholds only")
    else:
        gap = (baseline["accuracy"] - accuracy) * 100
        check("baseline_margin", gap <= evaluate_config.baseline_margin,
              f"test accuracy {accuracy:.4f} vs baseline {baseline['accuracy']:.4f} "
              f"({-gap:+.2f} points; at most {evaluate_config.baseline_margin} below allowed)")
        drops = {name: (baseline["per_class"][name]["recall"] - recall) * 100
                 for name, recall in recalls.items()}
        biggest = max(drops, key=drops.get)
        check("max_recall_drop", drops[biggest] <= evaluate_config.max_recall_drop,
              f"largest per-class recall drop vs baseline {drops[biggest]:.2f} points "
              f"({biggest}; at most {evaluate_config.max_recall_drop} allowed)")
    return all(c["passed"] for c in checks), checks


def blessing_reason(blessed: bool, checks: list) -> str:
    """One line: the failed checks when not blessed, else all checks."""
    shown = checks if blessed else [c for c in checks if not c["passed"]]
    return "; ".join(c["detail"] for c in shown)
