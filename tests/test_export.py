"""Every exported format takes the same raw uint8 images and agrees with the Keras model."""

import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from components.core import backbones, export, model as models, training
from components.core.config import PipelineConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MobileNet of 3 digit classes trained from scratch as the pipeline does it, its
    SavedModel, and raw uint8 test and training images with labels."""
    import tensorflow as tf

    digits = load_digits()
    keep = digits.target < 3
    images = np.repeat(np.round(digits.images[keep] * 255 / 16).astype(np.uint8)[..., None], 3, -1)
    labels = digits.target[keep]
    config = PipelineConfig.from_dict({
        "model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32, "weights": "none"},
        "head": {"l2_candidates": [1e-3]},
        "finetune": {"epochs": 12, "batch_size": 32, "patience": 12,
                     "scratch_learning_rate": 3e-3}})
    spec = backbones.get("mobilenet")
    backbone = backbones.build(spec, 32, 0.25, None)
    models.calibrate_batchnorm(backbone, "tf", 32, images[:64])
    features = np.asarray(models.attach(backbone, "tf", 32)(images))
    split = {"train_features": features[::2], "train_labels": labels[::2],
             "val_features": features[1::2], "val_labels": labels[1::2]}
    head, _ = training.train_head(split, 3, config)
    folder = tmp_path_factory.mktemp("export")
    models.save(backbone, str(folder / "backbone.keras"))
    models.save(head, str(folder / "head.keras"))
    train = tf.data.Dataset.from_tensor_slices((images[::2], labels[::2])).shuffle(500, seed=0)
    val = tf.data.Dataset.from_tensor_slices((images[1::2], labels[1::2]))
    classifier, _ = training.fine_tune(
        str(folder / "backbone.keras"), str(folder / "head.keras"), train.batch(32),
        val.batch(32), config, tf.distribute.get_strategy(), np.bincount(labels[::2]).tolist(),
        pretrained=False)
    export.export_saved_model(classifier, str(folder / "saved_model"))
    return classifier, folder, images[1::2], labels[1::2], images[::2], labels[::2]


@pytest.mark.parametrize("variant", export.TFLITE_VARIANTS)
def test_tflite_variants_agree_with_keras_on_raw_images(trained, variant):
    classifier, folder, test_images, test_labels, train_images, train_labels = trained
    reference = classifier.predict(test_images, verbose=0)
    assert np.mean(reference.argmax(1) == test_labels) > 0.7  # far above chance (1/3)
    calibration = export.calibration_sample(train_images, train_labels, 200, seed=0)
    path = str(folder / f"{variant}.tflite")
    with open(path, "wb") as handle:
        handle.write(export.tflite_bytes(str(folder / "saved_model"), variant, calibration))
    probabilities, latency = export.predict_tflite(path, test_images)
    figures = export.agreement(reference, probabilities)
    print(variant, figures, f"{os.path.getsize(path)} bytes")
    # Full INT8 of this tiny from-scratch model agrees on 0.96-0.98 (measured over three runs;
    # 0.80-0.91 when it was trained at 1e-3 and undertrained). CPU training is not
    # bit-reproducible, so int8 keeps a collapse guard (chance is 1/3) rather than the >= 0.95
    # goal of the quantization gates (issue 7). Float16 and dynamic-range must reach 0.95.
    floor = 0.75 if variant == "int8" else 0.95
    assert figures["top1_agreement"] >= floor
    assert latency.shape == (len(test_images),) and (latency > 0).all()
    # other raw sizes (the 8x8 digits upscaled to 24x24) go through the same in-model resize
    big = np.kron(test_images[:40], np.ones((1, 3, 3, 1), dtype=np.uint8))
    big_probabilities, _ = export.predict_tflite(path, big)
    assert export.agreement(classifier.predict(big, verbose=0), big_probabilities)[
        "top1_agreement"] >= floor - 0.1


def test_full_integer_model_takes_uint8_and_is_smaller(trained):
    _, folder, _, _, train_images, train_labels = trained
    from ai_edge_litert.interpreter import Interpreter

    sample = export.calibration_sample(train_images, train_labels, 30, seed=0)
    path = str(folder / "int8_check.tflite")
    with open(path, "wb") as handle:
        handle.write(export.tflite_bytes(str(folder / "saved_model"), "int8", sample))
    interpreter = Interpreter(model_path=path)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    fp16 = export.tflite_bytes(str(folder / "saved_model"), "fp16", sample)
    assert os.path.getsize(path) < len(fp16)


def test_onnx_matches_keras(trained, tmp_path):
    classifier, _, test_images, _, _, _ = trained
    path = str(tmp_path / "model.onnx")
    export.export_onnx(classifier, path)
    figures = export.agreement(classifier.predict(test_images, verbose=0),
                               export.predict_onnx(path, test_images))
    assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] < 1e-4


def test_calibration_sample_is_class_stratified():
    labels = np.array([0] * 90 + [1] * 10)
    images = np.arange(100)[:, None]
    sample = export.calibration_sample(images, labels, 20, seed=0)[:, 0]
    assert len(set(sample)) == 20
    assert (labels[sample] == 1).sum() == 10  # the rare class is fully represented
    assert export.calibration_sample(images, labels, 500, seed=0).shape[0] == 100


def test_unknown_variant_is_an_error(trained):
    with pytest.raises(ValueError, match="unknown TFLite variant"):
        export.tflite_bytes(str(trained[1] / "saved_model"), "int4", np.zeros((1, 32, 32, 3)))
