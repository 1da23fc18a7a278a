"""Classify image files with any exported format, so users can try what they shipped.

Every format takes the same raw RGB uint8 image (preprocessing is inside the model); class names
come from `labels.txt` (one per line, index order), which the pipeline writes beside each model.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np

from components.core.errors import InputError
from components.core.io.console import describe

LABELS = "labels.txt"

FORMATS = ".keras file, SavedModel folder, .tflite, .onnx or TensorRT .engine file"


class ModelError(InputError):
    """A model file that cannot be run; the message names the file, what is wrong and the fix."""


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
        from components.core.train import model as models

        loaded = models.load(model_path)
        return lambda image: loaded.predict(image[None], verbose=0)[0]
    if model_path.endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter

        from components.core.export import tflite
        from components.core.io.console import held_stderr

        Interpreter(model_path=model_path)  # a damaged file fails here, not at every image
        with held_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" notice
            tflite.predict_tflite(model_path, np.zeros((1, 32, 32, 3), np.uint8))
        return lambda image: tflite.predict_tflite(model_path, image[None])[0][0]
    if model_path.endswith(".onnx"):
        from components.core.export import onnx as onnx_export

        run = onnx_export.onnx_classifier(model_path)
        return lambda image: run(image[None])[0]
    if model_path.endswith(".engine"):
        from components.core.export import tensorrt

        reason = tensorrt.unavailable_reason()
        if reason:
            raise ModelError(f"cannot run the TensorRT engine {model_path}: {reason}")
        engine = tensorrt.EngineClassifier(model_path)
        return lambda image: engine.predict(image[None])[0]
    raise ModelError(f"{model_path} is not a model tlpipe can run; pass a {FORMATS}")


def load_classifier(model_path: str) -> tuple[Callable[[np.ndarray], np.ndarray], list | None]:
    """(classifier, class names or None) for the model at `model_path` (see `classifier`).
    ValueError with one line naming the file and what is wrong when it is missing, damaged or
    not a model."""
    if not os.path.exists(model_path):
        raise ModelError(f"model {model_path} does not exist; pass a {FORMATS}")
    if model_path.endswith(".keras"):
        _check_keras_file(model_path)
    try:
        return classifier(model_path), labels_for(model_path)
    except ModelError:
        raise
    except Exception as error:  # each runtime has its own: OSError, RuntimeError, protobuf...
        raise ModelError(f"model {model_path} cannot be loaded ({describe(error)}); it is "
                         f"damaged or was not written by tlpipe: export it again")


def _check_keras_file(path: str) -> None:
    """A .keras file is a zip archive with a valid config.json (Keras itself reports a
    truncated one as "File not found"). ValueError naming what is wrong."""
    import json
    import zipfile

    if os.path.isdir(path) or not zipfile.is_zipfile(path):
        raise ModelError(f"model {path} is not a .keras file (not a zip archive: truncated or "
                         f"another format); pass the model.keras a run wrote")
    with zipfile.ZipFile(path) as archive:
        try:
            damaged = archive.testzip()
            config = archive.read("config.json")
        except KeyError:
            raise ModelError(f"model {path} has no config.json: not a Keras model file")
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ModelError(f"model {path} is damaged ({describe(error)}); copy it again")
    if damaged:
        raise ModelError(f"model {path} is damaged: {damaged} inside fails its checksum; copy "
                         f"the file again")
    try:
        json.loads(config)
    except ValueError as error:
        raise ModelError(f"model {path}: its config.json is not valid JSON ({error}); the file "
                         f"is damaged: copy it again")


def predict_files(model_path: str, image_paths: list[str], top: int = 3) -> Iterator[dict]:
    """For every image file, in order: {"path", "top": [(label, probability), ...] best
    first} or, when it cannot be classified, {"path", "error": one-line reason}. A bad image
    never stops the others. ValueError at once for a bad model or `top` < 1."""
    from components.core.data.image_check import rgb_image

    if top < 1:
        raise InputError(f"--top {top}: show at least 1 class (--top 1 or more)")
    run, labels = load_classifier(model_path)
    for path in image_paths:
        try:
            if os.path.isdir(path):
                raise ValueError("is a folder, not an image file; pass the image files in it")
            if not os.path.exists(path):
                raise ValueError("does not exist")
            probabilities = np.asarray(run(np.asarray(rgb_image(path), dtype=np.uint8)))
        except ValueError as error:
            yield {"path": path, "error": str(error)}
            continue
        except Exception as error:  # PIL: not an image, truncated, unreadable
            yield {"path": path, "error": f"cannot be read as an image ({describe(error)})"}
            continue
        names = labels or [str(i) for i in range(len(probabilities))]
        order = np.argsort(-probabilities)[:top]
        yield {"path": path, "top": [(names[i], float(probabilities[i])) for i in order]}
