import numpy as np
import pytest
from sklearn import metrics as sk

from components.core import evaluation


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


def test_a_class_never_predicted_scores_zero_like_scikit_learn():
    labels = np.array([0, 0, 1, 2])
    probabilities = np.eye(3)[[0, 0, 0, 2]]
    result = evaluation.classification_metrics(labels, probabilities, ["x", "y", "z"])
    assert result["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["macro_f1"] == pytest.approx(
        sk.f1_score(labels, probabilities.argmax(1), average="macro", zero_division=0))


def test_bless_against_the_minimum_accuracy():
    assert evaluation.bless(0.9, 0.9)[0] is True
    blessed, reason = evaluation.bless(0.7, 0.8)
    assert blessed is False and "0.7000 < minimum 0.8000" in reason
