"""Exported formats of the classifier, all taking raw RGB uint8 images with preprocessing inside:
SavedModel, TFLite (float32, FP16, dynamic-range INT8, full-integer INT8, 16x8) and ONNX, each
with a runner that classifies images so every format can be checked against the Keras model, and
the accuracy gate that picks the TFLite variant to deploy.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from components.core import storage

log = logging.getLogger("tlpipe.export")

QUANTIZED_VARIANTS = ("fp16", "dynamic_int8", "int8", "int16x8")
TFLITE_VARIANTS = ("float32", *QUANTIZED_VARIANTS)


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


def gate(reference_accuracy: float, variants: dict, max_drop_points: float) -> str:
    """Marks each of `variants` ({name: {"test_accuracy", "size_bytes", ...}}) "accepted" or
    "rejected" in place, with its accuracy drop in percentage points below
    `reference_accuracy` (the float model's test accuracy in [0, 1]); a variant is rejected when
    it drops more than `max_drop_points`. Returns the recommended variant: the smallest accepted
    one (ties: the more accurate)."""
    for figures in variants.values():
        drop = round((reference_accuracy - figures["test_accuracy"]) * 100, 4)
        figures["accuracy_drop_points"] = drop
        figures["status"] = "accepted" if drop <= max_drop_points else "rejected"
    accepted = [name for name, figures in variants.items() if figures["status"] == "accepted"]
    if not accepted:
        raise ValueError(f"every variant lost more than {max_drop_points} points; "
                         f"raise export.max_accuracy_drop or include the float32 reference")
    return min(accepted, key=lambda name: (variants[name]["size_bytes"],
                                           -variants[name]["test_accuracy"]))


def latency_summary(latencies_ms: np.ndarray) -> dict:
    """Median and 90th percentile of per-image latencies (milliseconds)."""
    return {"latency_ms_median": float(np.median(latencies_ms)),
            "latency_ms_p90": float(np.percentile(latencies_ms, 90))}


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
        interpreter.set_tensor(source["index"], _input_values(image[None], source))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(target["index"])[0], target)

    return timed(run, images)


def timed(classify_one, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs `classify_one` (uint8 image (H, W, 3) -> probabilities (C,)) on each image after one
    warm-up call on the first. Returns (probabilities (N, C), latency per image in ms (N,))."""
    classify_one(images[0])
    outputs, latencies = [], []
    for image in images:
        started = time.perf_counter()
        outputs.append(classify_one(image))
        latencies.append((time.perf_counter() - started) * 1000)
    return np.stack(outputs), np.array(latencies)


def batch_latency(classify, images: np.ndarray, batch_size: int = 32, repeats: int = 5) -> float:
    """Median wall time in milliseconds of `classify` (uint8 images (N, H, W, 3) -> (N, C)) on
    one batch of `batch_size` images (the first ones, repeated if there are fewer), over
    `repeats` runs after one warm-up run."""
    batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])))
    classify(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        classify(batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


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


def export_onnx(model, path: str, opset: int = 17) -> None:
    """Writes the model as ONNX (dynamic batch and image size, ONNX `opset`) atomically to file
    `path`."""
    with storage.atomic_file(path) as partial:
        onnx_path = partial + ".onnx"
        model.export(onnx_path, format="onnx", verbose=False, opset_version=opset)
        os.replace(onnx_path, partial)


def onnx_classifier(path: str, batch_size: int = 32):
    """An ONNX Runtime CPU session for the model at `path`, as a function from uint8 images
    (N, H, W, 3) to probabilities float32 (N, C), run in batches of `batch_size`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: np.concatenate([session.run(None, {name: images[i:i + batch_size]})[0]
                                          for i in range(0, len(images), batch_size)])


def predict_onnx(path: str, images: np.ndarray) -> np.ndarray:
    """Classifies uint8 images (N, H, W, 3) with ONNX Runtime on the CPU; float32 (N, C)."""
    return onnx_classifier(path)(images)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely `candidate` probabilities (N, C) follow `reference`: top-1 agreement in [0, 1]
    and the maximum absolute difference."""
    return {"top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
            "max_abs_diff": float(np.max(np.abs(reference - candidate)))}
