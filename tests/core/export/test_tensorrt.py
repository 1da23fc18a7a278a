"""The TensorRT engine builder and runner on both API branches (10.x, 11.x), against the
stand-ins in tests/standin_tensorrt.py; the real build runs in test_export's gpu test and
benchmarks/gpu_check.sh."""

import os

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from components.core.export import measure, tensorrt
from tests import standin_tensorrt
from tests.helpers import ROOT

CLASSES = 2


def write_classifier(path, output_type=TensorProto.FLOAT):
    """A real ONNX classifier with the exported models' interface: uint8 (N, H, W, 3) 'image'
    of any size -> class probabilities (N, 2) (mean colour, a linear layer, softmax)."""
    weights = numpy_helper.from_array(np.array([[0.02, -0.02], [-0.01, 0.01], [0.03, -0.03]],
                                               np.float32), "weights")
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["softmax"], axis=1)]
    if output_type == TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", ["softmax"], ["probabilities"],
                                      to=TensorProto.FLOAT16))
    else:
        nodes.append(helper.make_node("Identity", ["softmax"], ["probabilities"]))
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "h", "w", 3])],
        [helper.make_tensor_value_info("probabilities", output_type, ["batch", CLASSES])],
        [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def onnx_runtime(path, images):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0].astype(np.float32)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (70, 40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("major", [10, 11])
def test_the_engine_is_built_strongly_typed_on_each_tensorrt_api(major, tmp_path, monkeypatch):
    trt, _ = standin_tensorrt.install(monkeypatch, major)
    engine = str(tmp_path / "model.engine")
    facts = tensorrt.build_engine(write_classifier(tmp_path / "model.onnx"), engine, 64)
    flags = {10: 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED, 11: 0}[major]
    profile = {"image": ((1, 32, 32, 3), (8, 64, 64, 3), (32, 1024, 1024, 3))}
    assert trt.calls == [
        ("create_network", flags),
        ("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, tensorrt.WORKSPACE_BYTES),
        ("build_serialized_network", flags, [profile],
         {trt.MemoryPoolType.WORKSPACE: tensorrt.WORKSPACE_BYTES})]  # no precision flag
    assert facts == {"tensorrt_version": trt.__version__, "api": tensorrt.API_PATHS[str(major)],
                     "input": "image", "profile": {"min": [1, 32, 32, 3],
                                                   "opt": [8, 64, 64, 3],
                                                   "max": [32, 1024, 1024, 3]},
                     "workspace_bytes": tensorrt.WORKSPACE_BYTES}
    assert sorted(os.listdir(tmp_path)) == ["model.engine", "model.onnx"]  # nothing partial
    assert open(engine, "rb").read().startswith(standin_tensorrt.MARKER)


def test_the_tensorrt_11_stand_in_lacks_what_tensorrt_11_removed(monkeypatch):
    trt, _ = standin_tensorrt.install(monkeypatch, 11)
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    assert not hasattr(config, "set_calibration_profile")
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()


@pytest.mark.parametrize("major", [10, 11])
def test_the_runner_matches_onnx_runtime_and_allocates_once_per_batch_shape(
        major, images, tmp_path, monkeypatch):
    _, runtime = standin_tensorrt.install(monkeypatch, major)
    source = write_classifier(tmp_path / "model.onnx")
    engine = str(tmp_path / "model.engine")
    tensorrt.build_engine(source, engine, 40)
    with tensorrt.EngineClassifier(engine) as classifier:
        first = classifier.predict(images)  # batches of 32, 32 and 6
        again = classifier.predict(images)
        assert runtime.mallocs == 4  # input + output buffers for two batch shapes, once
        assert first.dtype == np.float32 and first.shape == (70, CLASSES)
        np.testing.assert_allclose(first, onnx_runtime(source, images), rtol=1e-6)
        np.testing.assert_array_equal(first, again)  # results are copies, not the reused buffer
    assert runtime.allocations == {} and runtime.streams == set()


def test_the_runner_reads_the_output_dtype_from_the_engine(images, tmp_path, monkeypatch):
    standin_tensorrt.install(monkeypatch, 11)
    source = write_classifier(tmp_path / "half.onnx", TensorProto.FLOAT16)
    engine = str(tmp_path / "model.engine")
    tensorrt.build_engine(source, engine, 40)
    with tensorrt.EngineClassifier(engine) as classifier:
        assert classifier.output_dtype == np.float16
        probabilities = classifier.predict(images)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, onnx_runtime(source, images), atol=1e-3)


def test_an_onnx_file_tensorrt_cannot_parse_is_named(tmp_path, monkeypatch):
    standin_tensorrt.install(monkeypatch, 11)
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="TensorRT cannot parse .*model.onnx"):
        tensorrt.build_engine(str(broken), str(tmp_path / "model.engine"), 64)
    assert not (tmp_path / "model.engine").exists()


def test_a_file_that_is_not_an_engine_is_refused(tmp_path, monkeypatch):
    standin_tensorrt.install(monkeypatch, 10)
    (tmp_path / "model.engine").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="is not an engine this TensorRT"):
        tensorrt.EngineClassifier(str(tmp_path / "model.engine"))


def test_the_planned_api_path_without_tensorrt_names_both_rules(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as where it is missing
    planned = tensorrt.planned_api()
    assert planned.startswith("TensorRT not installed here")
    assert all(path in planned for path in tensorrt.API_PATHS.values())
    standin_tensorrt.install(monkeypatch, 10)
    assert tensorrt.planned_api() == tensorrt.API_PATHS["10"]


def test_without_a_gpu_the_engine_is_skipped_with_the_reason_and_its_plan(tmp_path):
    source = write_classifier(tmp_path / "model_fp16.onnx")
    files, formats = {"onnx_fp16": source}, {"onnx_fp16": {"status": "accepted"}}
    record = tensorrt.engine_figures(files, formats, "fp16", 64, None, str(tmp_path))
    assert record["status"] == "skipped" and "TensorRT" in record["reason"]
    assert record["onnx"] == "model_fp16.onnx" and record["precision"] == "fp16"
    assert record["api"] == tensorrt.planned_api()
    assert not (tmp_path / "model.engine").exists()


@pytest.mark.parametrize("major", [10, 11])
def test_the_step_builds_and_evaluates_the_engine_of_the_chosen_variant(
        major, images, tmp_path, monkeypatch):
    standin_tensorrt.install(monkeypatch, major)
    monkeypatch.setattr(tensorrt, "unavailable_reason", lambda: "")
    source = write_classifier(tmp_path / "model_int8.onnx")
    reference = onnx_runtime(source, images)
    labels = reference.argmax(1)
    record = tensorrt.engine_figures({"onnx_int8": source},
                                     {"onnx_int8": {"status": "accepted"}}, "int8", 40,
                                     (images, labels, reference), str(tmp_path))
    assert record["status"] == "built" and record["onnx"] == "model_int8.onnx"
    assert record["api"] == tensorrt.API_PATHS[str(major)]
    assert record["test_accuracy"] == 1.0 and record["top1_agreement"] == 1.0
    assert record["size_bytes"] == os.path.getsize(tmp_path / "model.engine")
    assert {"latency_ms_median", "latency_ms_p90", "latency_ms_batch32_median"} <= set(record)


def test_an_engine_is_not_built_from_a_variant_the_gate_rejected(tmp_path, monkeypatch):
    standin_tensorrt.install(monkeypatch, 11)
    monkeypatch.setattr(tensorrt, "unavailable_reason", lambda: "")
    source = write_classifier(tmp_path / "model_int8.onnx")
    formats = {"onnx": {"test_accuracy": 0.9, "size_bytes": 10, "top1_agreement": 1.0},
               "onnx_int8": {"test_accuracy": 0.875, "size_bytes": 4, "top1_agreement": 0.9}}
    measure.gate(0.9, formats, max_drop_points=1.0, min_agreement=0.95)
    record = tensorrt.engine_figures({"onnx_int8": source}, formats, "int8", 40, None,
                                     str(tmp_path))
    assert record["status"] == "skipped"
    assert ("onnx_int8 was rejected by the gate (2.5 points below the float model's accuracy "
            "(at most 1: export.max_accuracy_drop); agrees with the float model on 90.0% of "
            "test images (at least 95%: export.min_agreement))") in record["reason"]
    assert "export.tensorrt_precision" in record["reason"]
    assert not (tmp_path / "model.engine").exists()


def test_the_gpu_check_says_why_it_cannot_run_on_a_machine_without_a_gpu():
    import subprocess
    import sys

    if not tensorrt.unavailable_reason():
        pytest.skip("TensorRT and a GPU are here: run bash benchmarks/gpu_check.sh itself")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gpu_check: cannot run here: TensorRT or cuda-python")
