"""ONNX -> TensorRT engine with the `tensorrt` Python API (TF-TRT is gone from TensorFlow 2.18+),
and a runner that classifies raw images with a serialized engine.

The network is strongly typed on every TensorRT it supports (10.x and 11.x): the precision is the
ONNX file's own (`onnx_precision`: float32, float16, or int8 by explicit Q/DQ), never a builder
flag. TensorRT 11 removed the weak-typing API (BuilderFlag.FP16/INT8, the INT8 calibrators,
set_calibration_profile); TensorRT 10 still has it, so there strong typing is asked for with
NetworkDefinitionCreationFlag.STRONGLY_TYPED. `network_flags` picks the branch from the API the
imported module has.

Needs an NVIDIA GPU, TensorRT and cuda-python (images/Dockerfile.tensorrt). Where any is missing,
`unavailable_reason()` says which, and the pipeline step records "skipped" with that reason: it
never writes an engine it did not build.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import numpy as np

from components.core.export import measure
from components.core.io import storage

log = logging.getLogger("tlpipe.tensorrt")

PRECISIONS = ("fp32", "fp16", "int8")
# the tensorrt step's ONNX format an engine of each precision is built from
SOURCE_FORMAT = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}
MAX_BATCH = 32
MIN_SIDE, MAX_SIDE = 32, 1024  # raw image sides (pixels) the engine's profile accepts
OPTIMAL_BATCH = 8  # the batch size the profile is tuned for
WORKSPACE_BYTES = 1 << 30  # scratch memory TensorRT's tactics may use (bytes; default 1 GiB)
API_PATHS = {
    "10": "TensorRT 10.x: strongly typed network by NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "11": "TensorRT 11.x: strongly typed network (the only kind; create_network flags 0)"}


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


def network_flags(trt) -> tuple[int, str]:
    """(flags for `Builder.create_network`, the API path taken) for the `tensorrt` module `trt`:
    a module that still has the weak-typing BuilderFlag.FP16 (10.x) must be asked for a
    strongly typed network; one without it (11.x) builds nothing else."""
    if hasattr(trt.BuilderFlag, "FP16"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED), API_PATHS["10"]
    return 0, API_PATHS["11"]


def planned_api() -> str:
    """The API path an engine build here would take; where TensorRT is not installed, the
    rule that picks it."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT not installed here; at build time: " + "; ".join(API_PATHS.values())
    return network_flags(trt)[1]


def build_engine(onnx_path: str, engine_path: str, image_size: int,
                 workspace_bytes: int = WORKSPACE_BYTES) -> dict:
    """Builds and serializes an engine for the ONNX classifier at `onnx_path` (input uint8
    (batch, H, W, 3); its precision is the ONNX file's) to `engine_path`.

    The optimisation profile covers batch 1..MAX_BATCH and image sides MIN_SIDE..MAX_SIDE
    pixels, tuned for OPTIMAL_BATCH images of `image_size` pixels; tactics may use at most
    `workspace_bytes` of GPU scratch memory. Returns the build facts (TensorRT version, API
    path, input name, profile, workspace)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, api = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    source = network.get_input(0)
    shapes = {"min": (1, MIN_SIDE, MIN_SIDE, 3),
              "opt": (OPTIMAL_BATCH, image_size, image_size, 3),
              "max": (MAX_BATCH, MAX_SIDE, MAX_SIDE, 3)}
    profile = builder.create_optimization_profile()
    profile.set_shape(source.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine; its log above says why")
    with storage.atomic_file(engine_path) as partial:
        with open(partial, "wb") as handle:
            handle.write(serialized)
    return {"tensorrt_version": trt.__version__, "api": api, "input": source.name,
            "profile": {name: list(shape) for name, shape in shapes.items()},
            "workspace_bytes": workspace_bytes}


class EngineClassifier:
    """Classifies raw uint8 images (N, H, W, 3) with a serialized TensorRT engine on the GPU.

    Device buffers are allocated once per batch shape and reused; `close()` (or leaving a
    `with` block) frees them and the CUDA stream."""

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
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        self.buffers = {}  # batch shape -> (input device pointer, output device pointer, host out)
        self.stream = _check(self.cudart.cudaStreamCreate())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities float32 (N, C), in batches of at most MAX_BATCH."""
        return np.concatenate([self._run(np.ascontiguousarray(images[i:i + MAX_BATCH],
                                                              dtype=np.uint8))
                               for i in range(0, len(images), MAX_BATCH)])

    def close(self) -> None:
        """Frees every device buffer and the stream; the classifier cannot run afterwards."""
        for source, target, _ in self.buffers.values():
            _check(self.cudart.cudaFree(source))
            _check(self.cudart.cudaFree(target))
        self.buffers = {}
        if self.stream is not None:
            _check(self.cudart.cudaStreamDestroy(self.stream))
            self.stream = None

    def _buffers_for(self, shape: tuple):
        """(input pointer, output pointer, host output array) for a batch of `shape`."""
        if shape not in self.buffers:
            self.context.set_input_shape(self.input, shape)
            result = np.empty(tuple(self.context.get_tensor_shape(self.output)),
                              dtype=self.output_dtype)
            source = _check(self.cudart.cudaMalloc(int(np.prod(shape))))  # uint8 pixels
            target = _check(self.cudart.cudaMalloc(result.nbytes))
            self.buffers[shape] = (source, target, result)
        return self.buffers[shape]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart, copy = self.cudart, self.cudart.cudaMemcpyKind
        source, target, result = self._buffers_for(batch.shape)
        self.context.set_input_shape(self.input, batch.shape)
        _check(cudart.cudaMemcpyAsync(source, batch.ctypes.data, batch.nbytes,
                                      copy.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.input, int(source))
        self.context.set_tensor_address(self.output, int(target))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT failed to run the engine; its log above says why")
        _check(cudart.cudaMemcpyAsync(result.ctypes.data, target, result.nbytes,
                                      copy.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return result.astype(np.float32)  # a copy: the host buffer is reused


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


def engine_figures(files: dict, formats: dict, precision: str, image_size: int, test: tuple,
                   folder: str) -> dict:
    """The TensorRT engine of `precision` built from its ONNX format in `files` into `folder`
    and evaluated on `test` (images, labels, Keras probabilities); or "skipped" and why: that
    format was rejected by the gate, or TensorRT or a GPU is missing here."""
    source = SOURCE_FORMAT[precision]
    plan = {"precision": precision, "onnx": os.path.basename(files[source]),
            "api": planned_api()}
    reason = unavailable_reason()
    if formats[source]["status"] == "rejected":
        reason = (f"{source} was rejected by the gate ({formats[source]['reason']}); choose "
                  f"another export.tensorrt_precision or relax the gate")
    if reason:
        log.warning("TensorRT engine skipped: %s", reason)
        return {"status": "skipped", "reason": reason, **plan}
    engine_path = os.path.join(folder, "model.engine")
    built = build_engine(files[source], engine_path, image_size)
    with EngineClassifier(engine_path) as engine:
        figures = measure.runtime_figures(engine.predict, *test,
                                          size_bytes=os.path.getsize(engine_path))
    return {"status": "built", **plan, **built, **figures}
