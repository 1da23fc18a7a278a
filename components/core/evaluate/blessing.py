"""The evaluate step's judgement: test metrics with intervals, and the blessing decision, the
candidate against absolute rules and, when given, the production baseline's metrics on the same
images (TFX Evaluator's idea).
"""

from __future__ import annotations

import numpy as np

from components.core.evaluate.charts import thumbnail
from components.core.evaluate.metrics import (bootstrap_intervals, classification_metrics,
                                              most_confidently_wrong, roc_curve)

ABSOLUTE_RULES = ("min_accuracy", "min_class_recall")  # the rest compare with a baseline


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


def judge(labels: np.ndarray, probabilities: np.ndarray, images: np.ndarray, classes: list[str],
          evaluate_config, seed: int, baseline: dict | None = None) -> dict:
    """The judged part of an evaluation record: "metrics" (classification_metrics), bootstrap
    "intervals" (evaluate.bootstrap_samples resamples from `seed`), "blessed", "shippable"
    (the absolute rules alone passed: exportable whatever a baseline says), "checks",
    "blessing_reason", "baseline" (as given: {"uri", "metrics"} or None), "roc" (two classes
    only) and the evaluate.wrong_examples most confidently "wrong" images with thumbnails.
    labels (N,) int; probabilities (N, C); images uint8 (N, H, W, 3): an array or a
    cache.SplitImages (only the wrong ones are read)."""
    metrics = classification_metrics(labels, probabilities, classes)
    blessed, checks = bless(metrics, evaluate_config, baseline and baseline["metrics"])
    intervals = bootstrap_intervals(labels, probabilities, evaluate_config.bootstrap_samples,
                                    seed=seed)
    wrong = most_confidently_wrong(labels, probabilities, evaluate_config.wrong_examples)
    pictures = images[np.asarray(wrong, dtype=np.int64)]  # one read of a cache.SplitImages
    return {
        "metrics": metrics,
        "intervals": {**intervals, "samples": evaluate_config.bootstrap_samples},
        "blessed": blessed, "checks": checks,
        "shippable": all(c["passed"] for c in checks if c["rule"] in ABSOLUTE_RULES),
        "blessing_reason": blessing_reason(blessed, checks),
        "baseline": baseline,
        "roc": roc_curve(probabilities[:, 1], labels == 1) if len(classes) == 2 else None,
        "wrong": [{"index": i, "true": classes[labels[i]],
                   "predicted": classes[int(probabilities[i].argmax())],
                   "confidence": float(probabilities[i].max()),
                   "thumbnail": thumbnail(picture)} for i, picture in zip(wrong, pictures)]}
