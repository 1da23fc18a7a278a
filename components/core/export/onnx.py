"""ONNX export of a Keras classifier and an ONNX Runtime classifier for it."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from components.core.export import onnx_precision
from components.core.io import storage


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


def write_formats(model, folder: str, opset: int, variants: tuple, calibration) -> dict:
    """Writes model.onnx (ONNX `opset`) into `folder` and, from its constant-folded graph, each
    of `variants` ("fp16", "int8": model_<variant>.onnx; int8 calibrated on `calibration` uint8
    images). Returns {"onnx": path, "onnx_<variant>": path}."""
    files = {"onnx": os.path.join(folder, "model.onnx")}
    export_onnx(model, files["onnx"], opset)
    with tempfile.TemporaryDirectory() as scratch:
        folded = os.path.join(scratch, "folded.onnx")
        onnx_precision.fold_constants(files["onnx"], folded)
        for variant in variants:
            files[f"onnx_{variant}"] = os.path.join(folder, f"model_{variant}.onnx")
            onnx_precision.convert(variant, folded, files[f"onnx_{variant}"], calibration)
    return files
