"""ONNX -> TensorRT engine with the `tensorrt` Python API (TF-TRT is gone from TensorFlow 2.18+),
and a runner that classifies raw images with a serialized engine.

Needs an NVIDIA GPU, TensorRT 10 and cuda-python (images/Dockerfile.tensorrt). Where any is
missing, `unavailable_reason()` says which, and the pipeline step records "skipped" with that
reason: it never writes an engine it did not build.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

from components.core import storage

PRECISIONS = ("fp32", "fp16", "int8")
MAX_BATCH = 32
MIN_SIDE, MAX_SIDE = 32, 1024  # raw image sides (pixels) the engine's profile accepts
CALIBRATION_BATCH = 8


def unavailable_reason() -> str:
    """'' when TensorRT can run here, else why not and what to do."""
    try:
        import tensorrt  # noqa: F401
        _cudart()
    except ImportError as error:
        return (f"TensorRT or cuda-python is not installed ({error}); run this step on the "
                f"TensorRT image (images/Dockerfile.tensorrt) on a node with an NVIDIA GPU")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU: nvidia-smi is not on PATH; schedule this step on a GPU node"
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    if listing.returncode != 0 or "GPU" not in listing.stdout:
        return f"no NVIDIA GPU visible: nvidia-smi -L said {listing.stdout or listing.stderr!r}"
    return ""


def calibration_batches(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """uint8 images (N, S, S, 3) as C-contiguous batches of exactly `batch_size` (>= 1); the
    last batch is completed with images from the start, so every image is seen at least once."""
    if len(images) == 0:
        raise ValueError("no calibration images; set export.calibration_samples >= 1")
    count = -(-len(images) // batch_size) * batch_size
    padded = np.concatenate([images] * -(-count // len(images)))[:count]
    return [np.ascontiguousarray(padded[i:i + batch_size])
            for i in range(0, count, batch_size)]


def build_engine(onnx_path: str, engine_path: str, precision: str, image_size: int,
                 calibration_images: np.ndarray | None = None) -> dict:
    """Builds and serializes an engine for the ONNX classifier (input uint8 (batch, H, W, 3)).

    precision: "fp32", "fp16" or "int8" (INT8 with FP16 fallback, activation ranges calibrated
    with entropy calibration on `calibration_images`, uint8 (N, image_size, image_size, 3)
    training images; the calibration cache is written beside the engine as
    `<engine>.calibration`). The optimisation profile covers batch 1..MAX_BATCH and image sides
    MIN_SIDE..MAX_SIDE pixels, tuned for batch 8 at `image_size`. Returns build facts.
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; use one of {PRECISIONS}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    calibrator = None
    source = network.get_input(0)
    config.add_optimization_profile(_profile(builder, source.name, (1, MIN_SIDE, MIN_SIDE, 3),
                                             (8, image_size, image_size, 3),
                                             (MAX_BATCH, MAX_SIDE, MAX_SIDE, 3)))
    facts = {"tensorrt_version": trt.__version__, "precision": precision,
             "input": source.name, "max_batch": MAX_BATCH}
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        batches = calibration_batches(calibration_images, CALIBRATION_BATCH)
        shape = batches[0].shape
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(_profile(builder, source.name, shape, shape, shape))
        calibrator = _entropy_calibrator(trt, batches, engine_path + ".calibration")
        config.int8_calibrator = calibrator
        facts["calibration_images"] = len(calibration_images)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine; its log above says why")
    with storage.atomic_file(engine_path) as partial:
        with open(partial, "wb") as handle:
            handle.write(serialized)
    return facts


def _profile(builder, name: str, smallest: tuple, optimal: tuple, largest: tuple):
    profile = builder.create_optimization_profile()
    profile.set_shape(name, smallest, optimal, largest)
    return profile


def _entropy_calibrator(trt, batches: list[np.ndarray], cache_path: str):
    """A TensorRT entropy calibrator feeding `batches` (uint8) and keeping its cache at
    `cache_path`, so a rebuild with the same images skips calibration."""
    cudart = _cudart()

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.position = 0
            self.device = _check(cudart.cudaMalloc(batches[0].nbytes))

        def get_batch_size(self):
            return batches[0].shape[0]

        def get_batch(self, names):
            if self.position == len(batches):
                return None
            batch = batches[self.position]
            self.position += 1
            _check(cudart.cudaMemcpy(self.device, batch.ctypes.data, batch.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.device)]

        def read_calibration_cache(self):
            if os.path.isfile(cache_path):
                with open(cache_path, "rb") as handle:
                    return handle.read()
            return None

        def write_calibration_cache(self, cache):
            with storage.atomic_file(cache_path) as partial:
                with open(partial, "wb") as handle:
                    handle.write(bytes(cache))

        def release(self):
            _check(cudart.cudaFree(self.device))

    return Calibrator()


class EngineClassifier:
    """Classifies raw uint8 images (N, H, W, 3) with a serialized TensorRT engine on the GPU."""

    def __init__(self, engine_path: str):
        import tensorrt as trt

        self.cudart = _cudart()
        with open(engine_path, "rb") as handle:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise ValueError(f"{engine_path} is not an engine this TensorRT "
                             f"({trt.__version__}) and GPU can load; rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {name: self.engine.get_tensor_mode(name) for name in names}
        self.input = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT)
        self.stream = _check(self.cudart.cudaStreamCreate())

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities float32 (N, C), in batches of at most MAX_BATCH."""
        return np.concatenate([self._run(np.ascontiguousarray(images[i:i + MAX_BATCH],
                                                              dtype=np.uint8))
                               for i in range(0, len(images), MAX_BATCH)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart, copy = self.cudart, self.cudart.cudaMemcpyKind
        self.context.set_input_shape(self.input, batch.shape)
        result = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=np.float32)
        source = _check(cudart.cudaMalloc(batch.nbytes))
        target = _check(cudart.cudaMalloc(result.nbytes))
        try:
            _check(cudart.cudaMemcpyAsync(source, batch.ctypes.data, batch.nbytes,
                                          copy.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(self.input, int(source))
            self.context.set_tensor_address(self.output, int(target))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT failed to run the engine; its log above says why")
            _check(cudart.cudaMemcpyAsync(result.ctypes.data, target, result.nbytes,
                                          copy.cudaMemcpyDeviceToHost, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            cudart.cudaFree(source)
            cudart.cudaFree(target)
        return result


def _cudart():
    """The CUDA runtime bindings of cuda-python (module layout of 12.6+ or older)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def _check(result):
    """Unwraps a cuda-python call's (error, value...) tuple; RuntimeError on a CUDA error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else tuple(values) or None
