"""Exported formats of the classifier, all taking raw RGB uint8 images with preprocessing inside:
SavedModel, TFLite (FP16, dynamic-range INT8, full-integer INT8) and ONNX, each with a runner
that classifies images so every format can be checked against the Keras model.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from components.core import storage

log = logging.getLogger("tlpipe.export")

TFLITE_VARIANTS = ("fp16", "dynamic_int8", "int8")


def export_saved_model(model, path: str) -> None:
    """Writes a TensorFlow SavedModel (serving signature: uint8 (batch, H, W, 3) -> probabilities)
    atomically to directory `path`."""
    with storage.atomic_dir(path) as partial:
        model.export(partial, format="tf_saved_model", verbose=False)


def tflite_bytes(saved_model_dir: str, variant: str, calibration_images: np.ndarray) -> bytes:
    """Converts a SavedModel to TFLite.

    variant: "fp16" (float16 weights), "dynamic_int8" (int8 weights, float activations) or
    "int8" (full integer, uint8 image input, float output; activations calibrated on
    `calibration_images`, uint8 (N, S, S, 3) training images).
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; use one of {TFLITE_VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.representative_dataset = lambda: ([image[None]] for image in calibration_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def calibration_sample(images: np.ndarray, labels: np.ndarray, count: int,
                       seed: int) -> np.ndarray:
    """Up to `count` images drawn evenly across classes (round-robin over shuffled classes)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    order = [members[i] for i in range(max(map(len, per_class)))
             for members in per_class if i < len(members)]
    return images[np.array(order[:count], dtype=np.int64)]


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
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(target["index"])[0], target)

    run(images[0])
    outputs, latencies = [], []
    for image in images:
        started = time.perf_counter()
        outputs.append(run(image))
        latencies.append((time.perf_counter() - started) * 1000)
    return np.stack(outputs), np.array(latencies)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


def export_onnx(model, path: str) -> None:
    """Writes the model as ONNX (dynamic batch and image size) atomically to file `path`."""
    with storage.atomic_file(path) as partial:
        onnx_path = partial + ".onnx"
        model.export(onnx_path, format="onnx", verbose=False)
        os.replace(onnx_path, partial)


def predict_onnx(path: str, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Classifies uint8 images (N, H, W, 3) with ONNX Runtime on the CPU; float32 (N, C)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely `candidate` probabilities (N, C) follow `reference`: top-1 agreement in [0, 1]
    and the maximum absolute difference."""
    return {"top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
            "max_abs_diff": float(np.max(np.abs(reference - candidate)))}
