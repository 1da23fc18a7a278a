"""ONNX -> TensorRT engine with the `tensorrt` Python API (TF-TRT is gone from TensorFlow 2.18+).

Needs an NVIDIA GPU and TensorRT (images/Dockerfile.tensorrt). Where either is missing,
`unavailable_reason()` says which, and the pipeline step records "skipped" with that reason:
it never writes an engine it did not build.
"""

from __future__ import annotations

import shutil
import subprocess

from components.core import storage

MAX_BATCH = 32
MIN_SIDE, MAX_SIDE = 32, 1024  # raw image sides (pixels) the engine's profile accepts


def unavailable_reason() -> str:
    """'' when TensorRT can run here, else why not and what to do."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        return (f"TensorRT is not installed ({error}); run this step on the TensorRT image "
                f"(images/Dockerfile.tensorrt) on a node with an NVIDIA GPU")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU: nvidia-smi is not on PATH; schedule this step on a GPU node"
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    if listing.returncode != 0 or "GPU" not in listing.stdout:
        return f"no NVIDIA GPU visible: nvidia-smi -L said {listing.stdout or listing.stderr!r}"
    return ""


def build_engine(onnx_path: str, engine_path: str, precision: str, image_size: int) -> dict:
    """Builds and serializes an engine for the ONNX classifier (input uint8 (batch, H, W, 3)).

    precision: "fp16" or "fp32". The optimisation profile covers batch 1..MAX_BATCH and image
    sides MIN_SIDE..MAX_SIDE pixels, tuned for batch 8 at `image_size`. Returns build facts.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    source = network.get_input(0)
    profile = builder.create_optimization_profile()
    profile.set_shape(source.name, (1, MIN_SIDE, MIN_SIDE, 3), (8, image_size, image_size, 3),
                      (MAX_BATCH, MAX_SIDE, MAX_SIDE, 3))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine; its log above says why")
    with storage.atomic_file(engine_path) as partial:
        with open(partial, "wb") as handle:
            handle.write(serialized)
    return {"tensorrt_version": trt.__version__, "precision": precision,
            "input": source.name, "max_batch": MAX_BATCH}
