import numpy as np
import pytest
from sklearn import metrics as sk

from components.core import evaluation
from components.core.config import EvaluateConfig


def test_metrics_match_scikit_learn_on_known_predictions():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 200)
    probabilities = rng.dirichlet(np.ones(4), 200)
    probabilities[np.arange(120), labels[:120]] += 1  # 60% made right, the rest random
    classes = ["a", "b", "c", "d"]
    result = evaluation.classification_metrics(labels, probabilities, classes)
    predictions = probabilities.argmax(1)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
    assert result["macro_f1"] == pytest.approx(sk.f1_score(labels, predictions, average="macro"))
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, predictions)
    for i, name in enumerate(classes):
        assert result["per_class"][name]["precision"] == pytest.approx(precision[i])
        assert result["per_class"][name]["recall"] == pytest.approx(recall[i])
        assert result["per_class"][name]["f1"] == pytest.approx(f1[i])
        assert result["per_class"][name]["support"] == support[i]
    assert result["confusion_matrix"] == sk.confusion_matrix(labels, predictions).tolist()
    assert result["weighted_f1"] == pytest.approx(
        sk.f1_score(labels, predictions, average="weighted"))
    assert result["top_3_accuracy"] == pytest.approx(
        sk.top_k_accuracy_score(labels, probabilities, k=3))
    assert "top_5_accuracy" not in result  # only k below the number of classes
    normalised = probabilities / probabilities.sum(1, keepdims=True)
    again = evaluation.classification_metrics(labels, normalised, classes)
    assert again["log_loss"] == pytest.approx(sk.log_loss(labels, normalised))
    assert again["roc_auc_ovr"] == pytest.approx(
        sk.roc_auc_score(labels, normalised, multi_class="ovr", average="macro"))
    for i, name in enumerate(classes):
        assert again["per_class"][name]["roc_auc"] == pytest.approx(
            sk.roc_auc_score(labels == i, normalised[:, i]))


def test_auc_and_roc_curve_match_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    positives = rng.random(300) < 0.4
    scores = np.round(rng.random(300) * 0.6 + positives * 0.3, 2)  # many ties
    assert evaluation.one_vs_rest_auc(scores, positives) == pytest.approx(
        sk.roc_auc_score(positives, scores))
    curve = evaluation.roc_curve(scores, positives)
    fpr, tpr, thresholds = sk.roc_curve(positives, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)
    np.testing.assert_allclose(curve["thresholds"][1:], thresholds[1:])
    assert curve["thresholds"][0] > scores.max()
    assert evaluation.one_vs_rest_auc(scores, np.zeros(300, bool)) is None


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
    assert result["macro_f1"] == pytest.approx(
        sk.f1_score(labels, probabilities.argmax(1), average="macro", zero_division=0))


def metrics_with(accuracy, recalls):
    return {"accuracy": accuracy,
            "per_class": {name: {"recall": recall} for name, recall in recalls.items()}}


RULES = EvaluateConfig(min_accuracy=0.8, min_class_recall=0.5, baseline_margin=1.0,
                       max_recall_drop=5.0)


def test_bless_on_absolute_thresholds_without_baseline():
    blessed, checks = evaluation.bless(metrics_with(0.9, {"a": 0.9, "b": 0.9}), RULES)
    assert blessed and [c["rule"] for c in checks] == ["min_accuracy", "min_class_recall",
                                                       "baseline"]
    blessed, checks = evaluation.bless(metrics_with(0.79, {"a": 0.9, "b": 0.68}), RULES)
    reason = evaluation.blessing_reason(blessed, checks)
    assert not blessed and reason.startswith("test accuracy 0.7900 < minimum")
    blessed, checks = evaluation.bless(metrics_with(0.9, {"a": 1.0, "b": 0.4}), RULES)
    assert not blessed and "lowest class recall 0.4000 (b)" in evaluation.blessing_reason(
        blessed, checks)


def test_bless_against_a_baseline():
    candidate = metrics_with(0.90, {"a": 0.92, "b": 0.88})
    worse_baseline = metrics_with(0.85, {"a": 0.9, "b": 0.8})
    assert evaluation.bless(candidate, RULES, worse_baseline)[0]
    within_margin = metrics_with(0.905, {"a": 0.92, "b": 0.89})
    assert evaluation.bless(candidate, RULES, within_margin)[0]  # 0.5 points behind, 1 allowed
    better_baseline = metrics_with(0.93, {"a": 0.93, "b": 0.91})
    blessed, checks = evaluation.bless(candidate, RULES, better_baseline)
    assert not blessed and [c["rule"] for c in checks if not c["passed"]] == ["baseline_margin"]
    recall_drop = metrics_with(0.90, {"a": 0.80, "b": 0.99})  # same accuracy, b falls 11 points
    blessed, checks = evaluation.bless(candidate, RULES, recall_drop)
    assert not blessed and [c["rule"] for c in checks if not c["passed"]] == ["max_recall_drop"]
    assert "11.00 points (b" in evaluation.blessing_reason(blessed, checks)
