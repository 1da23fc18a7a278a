"""Classify image files with any exported format, so users can try what they shipped.

Every format takes the same raw RGB uint8 image (preprocessing is inside the model); class names
come from `labels.txt` (one per line, index order), which the pipeline writes beside each model.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

LABELS = "labels.txt"
FORMATS = ".keras file, SavedModel folder, .tflite, .onnx or TensorRT .engine file"


def write_labels(directory: str, classes: list[str]) -> None:
    with open(os.path.join(directory, LABELS), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in classes))


def labels_for(model_path: str) -> list[str] | None:
    """Class names from labels.txt beside the model (or beside a SavedModel folder)."""
    for folder in (model_path, os.path.dirname(os.path.abspath(model_path))):
        path = os.path.join(folder, LABELS)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return [line.rstrip("\n") for line in handle if line.strip()]
    return None


def classifier(model_path: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one uint8 image (H, W, 3) to class probabilities (C,) for the model at
    `model_path`, chosen by its format. ValueError naming the accepted formats otherwise."""
    if os.path.isdir(model_path) and os.path.isfile(os.path.join(model_path, "saved_model.pb")):
        import tensorflow as tf

        serve = tf.saved_model.load(model_path).signatures["serving_default"]
        return lambda image: next(iter(serve(tf.constant(image[None])).values())).numpy()[0]
    if model_path.endswith(".keras"):
        from components.core import model as models

        loaded = models.load(model_path)
        return lambda image: loaded.predict(image[None], verbose=0)[0]
    if model_path.endswith(".tflite"):
        from components.core import export

        return lambda image: export.predict_tflite(model_path, image[None])[0][0]
    if model_path.endswith(".onnx"):
        from components.core import export

        run = export.onnx_classifier(model_path)
        return lambda image: run(image[None])[0]
    if model_path.endswith(".engine"):
        from components.core import tensorrt

        reason = tensorrt.unavailable_reason()
        if reason:
            raise ValueError(f"cannot run the TensorRT engine {model_path}: {reason}")
        engine = tensorrt.EngineClassifier(model_path)
        return lambda image: engine.predict(image[None])[0]
    raise ValueError(f"{model_path} is not a model tlpipe can run; pass a {FORMATS}")


def predict_files(model_path: str, image_paths: list[str], top: int = 3) -> list[dict]:
    """[{"path", "top": [(label, probability), ...]}] for every image file, best first."""
    from components.core.data import rgb_image

    missing = [path for path in image_paths if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"image file {missing[0]} does not exist; pass existing image files")
    if not os.path.exists(model_path):
        raise ValueError(f"model {model_path} does not exist; pass a {FORMATS}")
    run, labels = classifier(model_path), labels_for(model_path)
    results = []
    for path in image_paths:
        probabilities = np.asarray(run(np.asarray(rgb_image(path), dtype=np.uint8)))
        labels = labels or [str(i) for i in range(len(probabilities))]
        order = np.argsort(-probabilities)[:top]
        results.append({"path": path,
                        "top": [(labels[i], float(probabilities[i])) for i in order]})
    return results
