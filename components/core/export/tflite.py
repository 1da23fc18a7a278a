"""SavedModel and TFLite exports of the classifier (float32, FP16, dynamic-range INT8,
full-integer INT8, 16x8), all taking raw RGB uint8 images with preprocessing inside, and the
LiteRT runner that classifies images with each so it can be checked against the Keras model.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from components.core.config.schema import TFLITE_QUANTIZED_VARIANTS
from components.core.export.measure import accuracy, agreement, latency_summary, timed
from components.core.io import storage

log = logging.getLogger("tlpipe.export")

TFLITE_VARIANTS = ("float32", *TFLITE_QUANTIZED_VARIANTS)


def export_saved_model(model, path: str) -> None:
    """Writes a TensorFlow SavedModel (serving signature: uint8 (batch, H, W, 3) -> probabilities)
    atomically to directory `path`."""
    with storage.atomic_dir(path) as partial:
        model.export(partial, format="tf_saved_model", verbose=False)


def export_float_input_saved_model(model, path: str) -> None:
    """Writes a SavedModel of `model` (a classifier built by `model.attach`: image input, then a
    chain of layers) whose input is float32 pixels in [0, 255] instead of uint8, atomically to
    `path`. Only for converting an int8-input TFLite model: the converter quantizes float inputs
    only, and a float -> uint8 cast inside the graph cannot be quantized."""
    import keras
    import tensorflow as tf

    def serve(pixels):
        for layer in model.layers[1:]:
            pixels = layer(pixels, training=False)
        return pixels

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[
        tf.TensorSpec((None, None, None, 3), tf.float32, name="image")])
    with storage.atomic_dir(path) as partial:
        archive.write_out(partial, verbose=False)


def tflite_bytes(saved_model_dir: str, variant: str, calibration_images: np.ndarray,
                 int8_input: bool = False) -> bytes:
    """Converts a SavedModel to TFLite.

    variant: "float32" (no quantization), "fp16" (float16 weights), "dynamic_int8" (int8
    weights, float activations), "int8" (full integer: int8 weights and activations, float
    output) or "int16x8" (int16 activations, int8 weights). "int8" and "int16x8" calibrate
    activation ranges on `calibration_images`, uint8 (N, S, S, 3) training images. Every variant
    takes the model's raw uint8 image input, except "int8" with `int8_input`: then
    `saved_model_dir` must come from `export_float_input_saved_model` and the model takes int8
    `pixel - 128` (input scale 1, zero point -128), for accelerators that take only int8.
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; use one of {TFLITE_VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant in ("int8", "int16x8"):
        dtype = np.float32 if int8_input else np.uint8
        converter.representative_dataset = lambda: (
            [image[None].astype(dtype)] for image in calibration_images)
    if variant == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_input:
            converter.inference_input_type = tf.int8
    elif variant == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS]  # the uint8 -> float cast of the image input
    return converter.convert()


def predict_tflite(path: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classifies uint8 images (N, H, W, 3) one at a time with the LiteRT interpreter.

    Returns (probabilities float32 (N, C), per-image latency in milliseconds (N,)); the first
    image is run once as warm-up before timing.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], [1, *images.shape[1:]])
    interpreter.allocate_tensors()
    target = interpreter.get_output_details()[0]

    def run(image):
        interpreter.set_tensor(source["index"], _input_values(image[None], source))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(target["index"])[0], target)

    return timed(run, images)


def _input_values(images: np.ndarray, detail: dict) -> np.ndarray:
    """uint8 pixels in the interpreter's input type: as they are, or quantized with the input's
    scale and zero point for an int8 input (pixel - 128 for the int8-input model)."""
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.int8:
        return np.clip(np.round(images / scale + zero_point), -128, 127).astype(np.int8)
    return images.astype(detail["dtype"])


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


def write_variants(model, saved_model: str, folder: str, shipping, calibration: np.ndarray,
                   test: tuple) -> dict:
    """Writes model_<variant>.tflite into `folder` for float32 and each of
    shipping.tflite_variants (converted from `saved_model`; full-integer INT8 from a float-input
    SavedModel when shipping.int8_input is "int8"), and measures each on `test` (uint8 images,
    labels, Keras probabilities). Returns {variant: {"file", "size_bytes", "test_accuracy",
    latency and agreement figures}} (not yet gated)."""
    images, labels, reference = test
    variants = {}
    with tempfile.TemporaryDirectory() as scratch:
        sources = dict.fromkeys(("float32", *shipping.tflite_variants), saved_model)
        if shipping.int8_input == "int8" and "int8" in sources:
            sources["int8"] = os.path.join(scratch, "float_input")
            export_float_input_saved_model(model, sources["int8"])
        for variant, source in sources.items():
            path = os.path.join(folder, f"model_{variant}.tflite")
            with open(path, "wb") as handle:
                handle.write(tflite_bytes(source, variant, calibration,
                                          int8_input=source != saved_model))
            probabilities, latency = predict_tflite(path, images)
            variants[variant] = {"file": os.path.basename(path),
                                 "size_bytes": os.path.getsize(path),
                                 "test_accuracy": accuracy(probabilities, labels),
                                 **latency_summary(latency), **agreement(reference, probabilities)}
    return variants
