"""Stand-ins for the `tensorrt` Python API (the 10.x and the 11.x surface) and cuda-python's
runtime module, so the CPU suite exercises components/core/export/tensorrt.py's builder and runner
calls.

Only what tlpipe calls is modelled, with the real names and signatures. The 11.x stand-in lacks
what TensorRT 11 removed (BuilderFlag.FP16/INT8/..., IBuilderConfig.int8_calibrator and
set_calibration_profile, the INT8 calibrator classes), so code that reaches for any of them fails
here as it would there. The stand-in builder "serializes" the parsed ONNX behind a marker, and
the stand-in execution context runs it with ONNX Runtime, so the runner's shapes, dtypes,
buffers and copies are checked on real numbers. Device memory is host memory. This is a test
double: nothing here is a TensorRT engine, and no pipeline code path can reach it.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np

MARKER = b"STAND-IN TENSORRT ENGINE (an ONNX model run by ONNX Runtime)\n"
VERSIONS = {10: "10.8.0.43", 11: "11.4.0.9"}
ONNX_DTYPES = {1: "FLOAT", 10: "HALF", 2: "UINT8"}  # ONNX TensorProto element types


def tensorrt_module(major: int) -> types.ModuleType:
    """A `tensorrt` stand-in with the API surface of TensorRT `major` (10 or 11); what the code
    under test did is recorded in `module.calls` (name, arguments)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSIONS[major]
    trt.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class BuilderFlag:  # both keep the non-precision flags
        REFIT = 6
        SPARSE_WEIGHTS = 7

    if major == 10:
        BuilderFlag.FP16, BuilderFlag.INT8, BuilderFlag.BF16 = 0, 1, 17
        NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0

        class IInt8EntropyCalibrator2:
            pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class MemoryPoolType:
        WORKSPACE = 0

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class DataType:
        FLOAT, HALF, INT8, UINT8 = "FLOAT", "HALF", "INT8", "UINT8"

    def nptype(dtype):
        return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8,
                "UINT8": np.uint8}[dtype]

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, flags):
            self.flags, self.model = flags, None

        def get_input(self, index):
            return Tensor(self.model.graph.input[index].name)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, data: bytes) -> bool:
            import onnx

            try:
                self.network.model = onnx.load_from_string(data)
            except Exception as error:  # noqa: BLE001 - a parser reports, it does not raise
                self.errors.append(f"ONNX parse error: {error}")
                return False
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    config_slots = ["limits", "profiles", "flags"]
    if major == 10:
        config_slots += ["int8_calibrator"]

    class BuilderConfig:
        __slots__ = config_slots  # assigning a removed attribute fails, as on the real one

        def __init__(self):
            self.limits, self.profiles, self.flags = {}, [], set()

        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("set_memory_pool_limit", pool, size))
            self.limits[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag):
            trt.calls.append(("set_flag", flag))
            self.flags.add(flag)

    if major == 10:
        def set_calibration_profile(self, profile):
            trt.calls.append(("set_calibration_profile", profile))
        BuilderConfig.set_calibration_profile = set_calibration_profile

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, smallest, optimal, largest):
            self.shapes[name] = (tuple(smallest), tuple(optimal), tuple(largest))

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build_serialized_network", network.flags,
                              [p.shapes for p in config.profiles], dict(config.limits)))
            name = network.model.graph.input[0].name
            if not any(name in profile.shapes for profile in config.profiles):
                return None  # the real builder fails without a profile for a dynamic input
            return MARKER + network.model.SerializeToString()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            if not data.startswith(MARKER):
                return None
            return Engine(data[len(MARKER):])

    class Engine:
        def __init__(self, model_bytes):
            import onnx
            import onnxruntime

            self.model = onnx.load_from_string(model_bytes)
            self.session = onnxruntime.InferenceSession(model_bytes,
                                                        providers=["CPUExecutionProvider"])
            self.names = [self.model.graph.input[0].name, self.model.graph.output[0].name]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            values = {v.name: v for v in (*self.model.graph.input, *self.model.graph.output)}
            return ONNX_DTYPES[values[name].type.tensor_type.elem_type]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addresses = engine, None, {}

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            classes = self.engine.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
            return (self.shape[0], classes)

        def set_tensor_address(self, name, address):
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream):
            source, target = self.engine.names
            pixels = np.ctypeslib.as_array(
                (ctypes.c_uint8 * int(np.prod(self.shape))).from_address(
                    self.addresses[source])).reshape(self.shape).copy()
            result = self.engine.session.run(None, {source: pixels})[0]
            result = np.ascontiguousarray(result, dtype=nptype(self.engine.get_tensor_dtype(
                target)))
            ctypes.memmove(self.addresses[target], result.ctypes.data, result.nbytes)
            return True

    for value in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType,
                  TensorIOMode, DataType, Builder, OnnxParser, Runtime):
        setattr(trt, value.__name__, value)
    trt.nptype = nptype
    return trt


def cuda_runtime_module() -> types.ModuleType:
    """A stand-in of `cuda.bindings.runtime`: every call returns cuda-python's (error, value...)
    tuple; device memory is host memory, tracked in `module.allocations` (pointer -> buffer),
    `module.mallocs` (how many cudaMalloc calls) and `module.streams` (live streams)."""
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.allocations, runtime.streams, runtime.mallocs = {}, set(), 0
    runtime.SUCCESS, runtime.INVALID = 0, 1

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's name
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def cudaMalloc(size):  # noqa: N802
        runtime.mallocs += 1
        buffer = np.empty(max(int(size), 1), np.uint8)
        runtime.allocations[buffer.ctypes.data] = buffer
        return runtime.SUCCESS, buffer.ctypes.data

    def cudaFree(pointer):  # noqa: N802
        found = runtime.allocations.pop(int(pointer), None) is not None
        return (runtime.SUCCESS if found else runtime.INVALID,)

    def cudaMemcpyAsync(target, source, size, kind, stream):  # noqa: N802
        if stream not in runtime.streams:
            return (runtime.INVALID,)
        ctypes.memmove(int(target), int(source), int(size))
        return (runtime.SUCCESS,)

    def cudaStreamCreate():  # noqa: N802
        stream = len(runtime.streams) + 1000
        runtime.streams.add(stream)
        return runtime.SUCCESS, stream

    def cudaStreamDestroy(stream):  # noqa: N802
        runtime.streams.discard(stream)
        return (runtime.SUCCESS,)

    def cudaStreamSynchronize(stream):  # noqa: N802
        return (runtime.SUCCESS if stream in runtime.streams else runtime.INVALID,)

    for function in (cudaMalloc, cudaFree, cudaMemcpyAsync, cudaStreamCreate, cudaStreamDestroy,
                     cudaStreamSynchronize):
        setattr(runtime, function.__name__, function)
    runtime.cudaMemcpyKind = cudaMemcpyKind
    return runtime


def install(monkeypatch, major: int) -> tuple[types.ModuleType, types.ModuleType]:
    """Puts the stand-ins where `import tensorrt` and `from cuda.bindings import runtime` find
    them for one test; returns (tensorrt, runtime)."""
    import sys

    trt, runtime = tensorrt_module(major), cuda_runtime_module()
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, runtime
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)
    return trt, runtime
