import numpy as np
import pytest
from sklearn import metrics as sk

from components.core.config.schema import EvaluateConfig
from components.core.evaluate import blessing, metrics as evaluation


def test_metrics_by_hand_with_a_class_never_seen():
    """Four classes, "d" neither in the labels nor predicted: its scores are 0 and its AUC is
    undefined (None), and the macro averages still count it, as scikit-learn's labels= does."""
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.3, 0.05, 0.05],
                              [0.2, 0.5, 0.2, 0.1], [0.1, 0.8, 0.05, 0.05],
                              [0.3, 0.6, 0.05, 0.05], [0.5, 0.1, 0.3, 0.1]])
    result = evaluation.classification_metrics(labels, probabilities, ["a", "b", "c", "d"])
    # predictions 0 0 1 1 1 0
    assert result["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0] * 4]
    assert result["accuracy"] == pytest.approx(4 / 6)
    a, b, c, d = (result["per_class"][name] for name in "abcd")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), 2 / 3, 3)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert c["f1"] == 0 and d["f1"] == 0 and d["support"] == 0 and d["roc_auc"] is None
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 4)
    assert result["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.8) / 6)
    assert result["top_3_accuracy"] == pytest.approx(1.0) and "top_5_accuracy" not in result
    true_class = probabilities[np.arange(6), labels]
    assert result["log_loss"] == pytest.approx(-np.mean(np.log(true_class)))
    assert result["roc_auc_ovr"] == pytest.approx(np.mean([a["roc_auc"], b["roc_auc"],
                                                           c["roc_auc"]]))
    assert c["roc_auc"] == pytest.approx(1.0)  # the only "c" has the highest "c" score (0.3)


def test_auc_and_roc_curve_by_hand_with_a_tie():
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    positives = np.array([True, False, True, False])
    # positive-negative pairs: 0.9>0.8, 0.9>0.1, 0.8=0.8 (half), 0.8>0.1
    assert evaluation.one_vs_rest_auc(scores, positives) == pytest.approx(3.5 / 4)
    curve = evaluation.roc_curve(scores, positives)
    assert curve["tpr"] == [0.0, 0.5, 1.0, 1.0] and curve["fpr"] == [0.0, 0.0, 0.5, 1.0]
    assert curve["thresholds"][1:] == [0.9, 0.8, 0.1]
    assert 0.9 < curve["thresholds"][0] < 0.9 + 1e-12  # finite, so the record stays JSON
    assert evaluation.one_vs_rest_auc(scores, np.zeros(4, bool)) is None
    assert evaluation.one_vs_rest_auc(scores, np.ones(4, bool)) is None


def test_expected_calibration_error_by_hand():
    labels = np.array([0, 0, 1, 1])
    # confidences 0.95 (right), 0.95 (wrong), 0.6 (right), 0.6 (right)
    probabilities = np.array([[0.95, 0.05], [0.05, 0.95], [0.4, 0.6], [0.4, 0.6]])
    result = evaluation.calibration(labels, probabilities, bins=10)
    # bin (0.9, 1]: confidence 0.95, accuracy 0.5; bin (0.5, 0.6]: confidence 0.6, accuracy 1
    assert result["expected_calibration_error"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.4)
    assert [(b["count"], b["accuracy"]) for b in result["reliability"]] == [(2, 1.0), (2, 0.5)]


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_data():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 2000)
    probabilities = rng.dirichlet(np.ones(3), 2000)
    probabilities[np.arange(1400), labels[:1400]] += 2
    wide = evaluation.bootstrap_intervals(labels[::20], probabilities[::20], samples=500)
    narrow = evaluation.bootstrap_intervals(labels, probabilities, samples=500)
    accuracy = np.mean(probabilities.argmax(1) == labels)
    assert narrow["accuracy"][0] < accuracy < narrow["accuracy"][1]
    assert narrow["accuracy"][1] - narrow["accuracy"][0] < wide["accuracy"][1] - wide[
        "accuracy"][0]
    assert narrow["macro_f1"][0] < narrow["macro_f1"][1]


def test_the_bootstraps_macro_f1_is_scikit_learns():
    """The bootstrap's own F1 (one bincount per resample) against scikit-learn's, a class absent
    from the labels and the predictions included."""
    rng = np.random.default_rng(2)
    labels, predictions = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    predictions[predictions == 3] = 0
    labels[labels == 3] = 1
    matrix = sk.confusion_matrix(labels, predictions, labels=range(5))
    assert evaluation._macro_f1(matrix) == pytest.approx(sk.f1_score(
        labels, predictions, labels=range(5), average="macro", zero_division=0))


def test_most_confidently_wrong_first():
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    assert evaluation.most_confidently_wrong(labels, probabilities, 5) == [1, 0, 3]
    assert evaluation.most_confidently_wrong(labels, probabilities, 1) == [1]


def test_a_class_never_predicted_scores_zero_like_scikit_learn():
    labels = np.array([0, 0, 1, 2])
    probabilities = np.eye(3)[[0, 0, 0, 2]]
    result = evaluation.classification_metrics(labels, probabilities, ["x", "y", "z"])
    assert result["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1,
                                        "roc_auc": 0.5}  # all its scores tie
    assert result["macro_f1"] == pytest.approx((0.8 + 0 + 1) / 3)


def metrics_with(accuracy, recalls):
    return {"accuracy": accuracy,
            "per_class": {name: {"recall": recall} for name, recall in recalls.items()}}


RULES = EvaluateConfig(min_accuracy=0.8, min_class_recall=0.5, baseline_margin=1.0,
                       max_recall_drop=5.0)


def test_bless_on_absolute_thresholds_without_baseline():
    blessed, checks = blessing.bless(metrics_with(0.9, {"a": 0.9, "b": 0.9}), RULES)
    assert blessed and [c["rule"] for c in checks] == ["min_accuracy", "min_class_recall",
                                                       "baseline"]
    blessed, checks = blessing.bless(metrics_with(0.79, {"a": 0.9, "b": 0.68}), RULES)
    reason = blessing.blessing_reason(blessed, checks)
    assert not blessed and reason.startswith("test accuracy 0.7900 < minimum")
    blessed, checks = blessing.bless(metrics_with(0.9, {"a": 1.0, "b": 0.4}), RULES)
    assert not blessed and "lowest class recall 0.4000 (b)" in blessing.blessing_reason(
        blessed, checks)


def test_bless_against_a_baseline():
    candidate = metrics_with(0.90, {"a": 0.92, "b": 0.88})
    worse_baseline = metrics_with(0.85, {"a": 0.9, "b": 0.8})
    assert blessing.bless(candidate, RULES, worse_baseline)[0]
    within_margin = metrics_with(0.905, {"a": 0.92, "b": 0.89})
    assert blessing.bless(candidate, RULES, within_margin)[0]  # 0.5 points behind, 1 allowed
    better_baseline = metrics_with(0.93, {"a": 0.93, "b": 0.91})
    blessed, checks = blessing.bless(candidate, RULES, better_baseline)
    assert not blessed and [c["rule"] for c in checks if not c["passed"]] == ["baseline_margin"]
    recall_drop = metrics_with(0.90, {"a": 0.80, "b": 0.99})  # same accuracy, b falls 11 points
    blessed, checks = blessing.bless(candidate, RULES, recall_drop)
    assert not blessed and [c["rule"] for c in checks if not c["passed"]] == ["max_recall_drop"]
    assert "11.00 points (b" in blessing.blessing_reason(blessed, checks)
