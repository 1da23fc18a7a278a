"""Reduced-precision ONNX classifiers for TensorRT's strongly typed builds, made and checked on
the CPU with ONNX Runtime.

TensorRT 11 takes its precision from the network only (no FP16/INT8 builder flags), and
TensorRT 10 does the same for a strongly typed network. So the precision is decided here, in the
ONNX file:
- "fp16": float16 weights and compute, with uint8 image input and float32 probabilities kept,
  and the ops that need float32 range left in float32 (the input cast, the resize, the softmax,
  and onnxconverter-common's default list of ops without float16 kernels).
- "int8": explicit quantization, TensorRT's placement: symmetric int8 QuantizeLinear /
  DequantizeLinear pairs on the inputs (activations, per tensor) and weights (per output
  channel) of every Conv, MatMul and Gemm; their outputs and the biases stay float, so TensorRT
  fuses each Q/DQ-Conv-bias-activation chain into one int8 kernel. Activation ranges come from
  the calibration images (the largest magnitude seen, MinMax).

Both start from the exported model with BatchNorm folded into the convolutions first
(`fold_constants`): a quantized convolution must see its folded weights, or its per-tensor output
range is the unnormalised one and accuracy collapses (measured: 0.64 instead of 0.80 on
hymenoptera with MobileNet v1 0.25).
"""

from __future__ import annotations

import numpy as np

from components.core.config.schema import ONNX_VARIANTS
from components.core.io import storage

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]

FLOAT32_OPS = ["Resize"]  # beyond onnxconverter-common's own list (no output op: see to_fp16)

CALIBRATION_BATCH = 8  # images per ONNX Runtime calibration run


def fold_constants(source: str, target: str) -> None:
    """Writes `source` with ONNX Runtime's basic graph optimisations applied (BatchNorm and
    constant Mul/Add folded into Conv, constants folded; the result is standard ONNX that
    TensorRT parses) to `target`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with storage.atomic_file(target) as partial:
        quant_pre_process(source, partial, skip_symbolic_shape=True)


def to_fp16(source: str, target: str) -> None:
    """Writes the float16 version of the ONNX classifier at `source` to `target` (see the
    module docstring for what stays float32)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(source)
    # The input Cast is blocked by node name, not by op type: onnxconverter-common 1.16 loops
    # forever with "Cast" in op_block_list (it revisits the casts it inserts), and unblocked
    # it retypes the cast's output without its `to` attribute, which ONNX Runtime rejects.
    casts = [node.name for node in model.graph.node if node.op_type == "Cast"]
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FLOAT32_OPS,
        node_block_list=casts)
    with storage.atomic_file(target) as partial:
        onnx.save(converted, partial)


def to_int8_qdq(source: str, target: str, calibration_images: np.ndarray) -> None:
    """Writes the explicitly quantized (Q/DQ) int8 version of the ONNX classifier at `source`
    to `target`, with activation ranges calibrated on `calibration_images`, uint8
    (N >= 1, H, W, 3) training images."""
    import onnxruntime
    from onnxruntime import quantization as ortq

    if len(calibration_images) == 0:
        raise ValueError("no calibration images; set export.calibration_samples >= 1")
    name = onnxruntime.InferenceSession(
        source, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    batches = [{name: np.ascontiguousarray(calibration_images[i:i + CALIBRATION_BATCH])}
               for i in range(0, len(calibration_images), CALIBRATION_BATCH)]

    class Batches(ortq.CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(batches)

        def get_next(self):
            return next(self.remaining, None)

    with storage.atomic_file(target) as partial:
        ortq.quantize_static(
            source, partial, Batches(), quant_format=ortq.QuantFormat.QDQ,
            activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
            per_channel=True, calibrate_method=ortq.CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPS,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS})


def convert(variant: str, folded: str, target: str, calibration_images: np.ndarray) -> None:
    """Writes `variant` (one of ONNX_VARIANTS) of the folded float ONNX model `folded` to `target`;
    `calibration_images` are used by "int8" only."""
    if variant == "fp16":
        to_fp16(folded, target)
    elif variant == "int8":
        to_int8_qdq(folded, target, calibration_images)
    else:
        raise ValueError(f"unknown ONNX variant {variant!r}; use one of {ONNX_VARIANTS}")
