"""The whole pipeline on real photos (../shared's ants and bees) with real ImageNet weights,
through kfp.local and the CLI as a user runs it: the accuracy bar and the data report."""

import json
import os

import numpy as np
import pytest

from tests.helpers import HYMENOPTERA, MOBILENET_WEIGHTS, artifact, require_shared, run_pipeline


@pytest.mark.e2e
@pytest.mark.slow
def test_hymenoptera_with_imagenet_weights_keeps_up_with_the_frozen_feature_baseline(
        capsys, tmp_path):
    data = require_shared(HYMENOPTERA)
    weights = require_shared(MOBILENET_WEIGHTS)
    summary, out = run_pipeline(capsys, data, tmp_path / "out", "--backbone", "mobilenet",
                                "--alpha", "0.25", "--image-size", "160", "--weights", weights)
    manifest = json.load(open(os.path.join(artifact(summary, "ingest", "dataset")["path"],
                                           "manifest.json")))
    assert manifest["counts"]["test"] == {"ants": 70, "bees": 83}  # the given val/ is the test
    # the data report names the GIF placeholder and the odd file names
    data_report = open(artifact(summary, "ingest", "data_report")["path"]).read()
    assert "`train/ants/imageNotFound.gif`: P GIF -> RGB PNG" in data_report
    assert "`train/ants/imageNotFound.gif`: 33 colours" in data_report  # the placeholder
    assert "`train/ants/ant photos.jpg`" in data_report
    assert "`val/ants/F.pergan.28(f).jpg`" in data_report
    accuracy = artifact(summary, "evaluate", "metrics")["metadata"]["accuracy"]
    centroid = nearest_centroid_accuracy(artifact(summary, "preprocess", "backbone")["path"],
                                         artifact(summary, "preprocess", "images")["path"])
    print(f"tlpipe {accuracy:.4f} vs nearest centroid {centroid:.4f}")
    # Measured on this split: tlpipe 0.8562 (the fine-tuned model shipped), nearest centroid of
    # the L2-normalised features 0.8170 (one image is 0.65 points; the 95% bootstrap interval is
    # about +-6 points; the old head-only default was 0.8105). The bar: fine-tuning shipped,
    # at least 3 images ahead of the centroid.
    assert artifact(summary, "finetune", "model")["metadata"]["chosen"] == "finetuned"
    assert accuracy >= centroid + 0.02 and accuracy > 0.83, out[-2000:]
    # a console a person reads: one line per step and the summary, the rest in console.log
    assert len(out.splitlines()) <= 40, out
    # The Q/DQ INT8 ONNX of the real pretrained model (measured: 0.65 points below float with
    # one trained model, 3.92 with the next (6 of 153 images; the gate rejects it), 2.91x
    # smaller; before BatchNorm folding and with quantized Conv outputs it was 16 points below)
    onnx_facts = json.load(open(os.path.join(artifact(summary, "tensorrt", "onnx")["path"],
                                             "tensorrt.json")))
    int8 = onnx_facts["onnx_int8"]
    print("onnx_int8:", int8)
    assert int8["accuracy_drop_points"] <= 5 and int8["size_ratio"] > 2.5
    assert int8["status"] == ("accepted" if int8["accuracy_drop_points"] <= 1
                              and int8["top1_agreement"] >= 0.95 else "rejected")


def nearest_centroid_accuracy(backbone_dir, images_dir):
    """Test accuracy of the nearest class mean of the run's own frozen backbone features
    (L2-normalised), trained on the run's train split: the baseline transfer must beat."""
    from components.core.data import cache
    from components.core.config import backbones
    from components.core.train import model as models

    backbone = models.load(os.path.join(backbone_dir, "backbone.keras"))
    size = json.load(open(os.path.join(images_dir, cache.META)))["image_size"]
    extractor = models.attach(backbone, backbones.get("mobilenet").preprocess_mode, size)
    features = {}
    for split in ("train", "test"):
        images, labels = cache.read_arrays(images_dir, split)
        values = extractor.predict(images, batch_size=64, verbose=0)
        features[split] = (values / np.linalg.norm(values, axis=1, keepdims=True), labels)
    train, train_labels = features["train"]
    centroids = np.stack([train[train_labels == c].mean(0) for c in np.unique(train_labels)])
    test, test_labels = features["test"]
    return float(np.mean(np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), 1)
                         == test_labels))
