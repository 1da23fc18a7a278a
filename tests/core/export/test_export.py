"""Every exported format takes the same raw uint8 images and agrees with the Keras model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from components.core.config import backbones
from components.core.config.schema import ONNX_VARIANTS, PipelineConfig
from components.core.data import shards
from components.core.export import calibration as calibrating, measure, onnx as onnx_export, tflite
from components.core.train import (finetune as finetuning, head as head_training,
                                   model as models)
from tests.helpers import ROOT, write_image_cache

# Top-1 agreement an int8 export of the `trained` model keeps (with Keras, and between a
# picture and its mirror image): over data seeds 0-4 it kept 0.959-0.989 with Keras and
# 0.970-0.985 between mirror images (134 test digits, a 32-px model trained from scratch, 88-94%
# accurate); a run before the fixture was seeded kept 0.948.
INT8_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MobileNet of 3 digit classes trained from scratch as the pipeline does it, its
    SavedModel, and raw uint8 test and training images with labels. Seeded: the same model
    whichever tests ran before in this process."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)  # the random backbone
    digits = load_digits()
    keep = digits.target < 3
    images = np.repeat(np.round(digits.images[keep] * 255 / 16).astype(np.uint8)[..., None], 3, -1)
    labels = digits.target[keep]
    config = PipelineConfig.from_dict({
        "model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32, "weights": "none"},
        "head": {"l2_candidates": [1e-3]},
        "finetune": {"epochs": 12, "batch_size": 32, "patience": 12, "warmup_epochs": 1,
                     "scratch_learning_rate": 3e-3}})
    spec = backbones.get("mobilenet")
    backbone = models.build_backbone(spec, 32, 0.25, None)
    models.calibrate_batchnorm(backbone, "tf", 32, images[:64])
    features = np.asarray(models.attach(backbone, "tf", 32)(images))
    split = {"train_features": features[::2], "train_labels": labels[::2],
             "val_features": features[1::2], "val_labels": labels[1::2]}
    head, _ = head_training.train_head(split, 3, config.head, config.loss, config.model.dropout)
    folder = tmp_path_factory.mktemp("export")
    models.save(backbone, str(folder / "backbone.keras"))
    models.save(head, str(folder / "head.keras"))
    train = tf.data.Dataset.from_tensor_slices((images[::2], labels[::2])).shuffle(500, seed=0)
    val = tf.data.Dataset.from_tensor_slices((images[1::2], labels[1::2]))
    strategy = tf.distribute.get_strategy()
    epochs = shards.Epochs(
        lambda epoch: strategy.experimental_distribute_dataset(train.batch(32)),
        steps_per_epoch=-(-len(labels[::2]) // 32), how={})
    classifier, _ = finetuning.fine_tune(
        str(folder / "backbone.keras"), str(folder / "head.keras"), epochs, val.batch(32),
        config.model, config.finetune, config.loss, config.data.seed, strategy,
        np.bincount(labels[::2]).tolist(), pretrained=False)
    tflite.export_saved_model(classifier, str(folder / "saved_model"))
    return classifier, folder, images[1::2], labels[1::2], images[::2], labels[::2]


@pytest.mark.parametrize("variant", tflite.TFLITE_VARIANTS)
def test_tflite_variants_agree_with_keras_on_raw_images(trained, variant):
    classifier, folder, test_images, test_labels, train_images, train_labels = trained
    reference = classifier.predict(test_images, verbose=0)
    assert np.mean(reference.argmax(1) == test_labels) > 0.7  # far above chance (1/3)
    calibration = train_images[calibrating.calibration_indices(train_labels, 200, seed=0)]
    path = str(folder / f"{variant}.tflite")
    with open(path, "wb") as handle:
        handle.write(tflite.tflite_bytes(str(folder / "saved_model"), variant, calibration))
    probabilities, latency = tflite.predict_tflite(path, test_images)
    figures = measure.agreement(reference, probabilities)
    print(variant, figures, f"{os.path.getsize(path)} bytes")
    assert figures["top1_agreement"] >= 0.95
    assert latency.shape == (len(test_images),) and (latency > 0).all()
    # other raw sizes (the 8x8 digits upscaled to 24x24) go through the same in-model resize
    big = np.kron(test_images[:40], np.ones((1, 3, 3, 1), dtype=np.uint8))
    big_probabilities, _ = tflite.predict_tflite(path, big)
    assert measure.agreement(classifier.predict(big, verbose=0), big_probabilities)[
        "top1_agreement"] >= 0.75  # out of distribution for this tiny model: a collapse guard


def test_full_integer_model_takes_raw_uint8_and_is_smallest(trained):
    _, folder, _, _, train_images, train_labels = trained
    from ai_edge_litert.interpreter import Interpreter

    sample = train_images[calibrating.calibration_indices(train_labels, 30, seed=0)]
    path = str(folder / "int8_check.tflite")
    with open(path, "wb") as handle:
        handle.write(tflite.tflite_bytes(str(folder / "saved_model"), "int8", sample))
    interpreter = Interpreter(model_path=path)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    fp16 = tflite.tflite_bytes(str(folder / "saved_model"), "fp16", sample)
    assert os.path.getsize(path) < len(fp16)


def test_int8_input_model_takes_shifted_pixels_and_agrees_with_keras(trained):
    classifier, folder, test_images, _, train_images, train_labels = trained
    from ai_edge_litert.interpreter import Interpreter

    float_input = str(folder / "float_input")
    tflite.export_float_input_saved_model(classifier, float_input)
    sample = train_images[calibrating.calibration_indices(train_labels, 200, seed=0)]
    path = str(folder / "int8_input.tflite")
    with open(path, "wb") as handle:
        handle.write(tflite.tflite_bytes(float_input, "int8", sample, int8_input=True))
    source = Interpreter(model_path=path).get_input_details()[0]
    assert source["dtype"] == np.int8 and source["quantization"] == (1.0, -128)
    probabilities, _ = tflite.predict_tflite(path, test_images)  # fed pixel - 128
    figures = measure.agreement(classifier.predict(test_images, verbose=0), probabilities)
    print("int8 input", figures)
    assert figures["top1_agreement"] >= 0.95


@pytest.mark.parametrize("opset", [13, 18])
def test_onnx_matches_keras_at_the_chosen_opset_with_any_batch(trained, tmp_path, opset):
    import onnx

    classifier, _, test_images, _, _, _ = trained
    path = str(tmp_path / "model.onnx")
    onnx_export.export_onnx(classifier, path, opset)
    loaded = onnx.load(path)
    assert {entry.version for entry in loaded.opset_import if entry.domain in ("", "ai.onnx")} == {
        opset}
    batch = loaded.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch
    run = onnx_export.onnx_classifier(path, batch_size=7)  # odd batches, last one partial
    figures = measure.agreement(classifier.predict(test_images, verbose=0), run(test_images))
    assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] < 1e-4


@pytest.fixture(scope="module")
def onnx_variants(trained, tmp_path_factory):
    """The trained model as float ONNX, BatchNorm-folded ONNX and each reduced-precision
    variant: {"float", "folded", "fp16", "int8"} -> path."""
    from components.core.export import onnx_precision

    classifier, _, _, _, train_images, train_labels = trained
    folder = tmp_path_factory.mktemp("onnx")
    paths = {name: str(folder / f"{name}.onnx") for name in ("float", "folded", "fp16", "int8")}
    onnx_export.export_onnx(classifier, paths["float"])
    onnx_precision.fold_constants(paths["float"], paths["folded"])
    calibration = train_images[calibrating.calibration_indices(train_labels, 200, seed=0)]
    for variant in ONNX_VARIANTS:
        onnx_precision.convert(variant, paths["folded"], paths[variant], calibration)
    return paths


def io_types(model):
    return ([i.type.tensor_type.elem_type for i in model.graph.input],
            [o.type.tensor_type.elem_type for o in model.graph.output])


def test_folding_keeps_the_model_and_removes_the_batchnorm_arithmetic(trained, onnx_variants):
    import onnx

    classifier, _, test_images, _, _, _ = trained
    counts = [sum(node.op_type in ("Mul", "Add", "BatchNormalization")
                  for node in onnx.load(onnx_variants[name]).graph.node)
              for name in ("float", "folded")]
    assert counts[1] < counts[0] / 2  # only the preprocessing's scale and shift are left
    figures = measure.agreement(classifier.predict(test_images, verbose=0),
                                onnx_export.predict_onnx(onnx_variants["folded"], test_images))
    assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] < 1e-4


def test_the_fp16_onnx_computes_in_float16_behind_the_same_interface(trained, onnx_variants):
    import onnx
    from onnx import TensorProto

    classifier, _, test_images, _, _, _ = trained
    model = onnx.load(onnx_variants["fp16"])
    assert io_types(model) == ([TensorProto.UINT8], [TensorProto.FLOAT])
    weights = [w for w in model.graph.initializer if len(w.dims) == 4]  # convolution kernels
    assert weights and all(w.data_type == TensorProto.FLOAT16 for w in weights)
    assert os.path.getsize(onnx_variants["fp16"]) < 0.6 * os.path.getsize(onnx_variants["float"])
    figures = measure.agreement(classifier.predict(test_images, verbose=0),
                                onnx_export.predict_onnx(onnx_variants["fp16"], test_images))
    assert figures["top1_agreement"] >= 0.98 and figures["max_abs_diff"] < 0.1


def test_the_int8_onnx_is_symmetric_qdq_on_the_inputs_of_every_conv_and_gemm(trained,
                                                                             onnx_variants):
    """TensorRT's explicit-quantization placement: a DequantizeLinear feeds the activation and
    the weight of every Conv/MatMul/Gemm, zero points are 0 (symmetric), weights per output
    channel, biases and outputs float."""
    import onnx
    from onnx import TensorProto, numpy_helper

    classifier, _, test_images, _, _, _ = trained
    model = onnx.load(onnx_variants["int8"])
    assert io_types(model) == ([TensorProto.UINT8], [TensorProto.FLOAT])
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    computing = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert len(computing) > 10
    for node in computing:
        activation, weight = (producers[name] for name in node.input[:2])
        assert activation.op_type == weight.op_type == "DequantizeLinear", node.name
        assert constants[weight.input[0]].dtype == np.int8  # the weight is stored as int8
        channels = constants[weight.input[0]].shape[1 if node.op_type != "Conv" else 0]
        assert constants[weight.input[1]].shape == (channels,)  # one scale per channel
        assert len(node.input) < 3 or node.input[2] in constants  # the bias stays float
        consumers = [n.op_type for n in model.graph.node if node.output[0] in n.input]
        assert "QuantizeLinear" not in consumers, node.name  # outputs are not quantized
    quantizers = [n for n in model.graph.node if n.op_type in ("QuantizeLinear",
                                                               "DequantizeLinear")]
    assert all(not constants[n.input[2]].any() for n in quantizers)  # zero points all 0
    size_ratio = os.path.getsize(onnx_variants["float"]) / os.path.getsize(onnx_variants["int8"])
    figures = measure.agreement(classifier.predict(test_images, verbose=0),
                                onnx_export.predict_onnx(onnx_variants["int8"], test_images))
    print("onnx int8:", figures, f"{size_ratio:.2f}x smaller")
    assert size_ratio > 2 and figures["top1_agreement"] >= 0.9


def test_unknown_onnx_variants_and_an_empty_calibration_set_are_errors(onnx_variants, tmp_path):
    from components.core.export import onnx_precision

    with pytest.raises(ValueError, match="unknown ONNX variant 'int4'"):
        onnx_precision.convert("int4", onnx_variants["folded"], str(tmp_path / "x.onnx"), None)
    with pytest.raises(ValueError, match="calibration_samples"):
        onnx_precision.convert("int8", onnx_variants["folded"], str(tmp_path / "x.onnx"),
                               np.zeros((0, 32, 32, 3), np.uint8))
    assert not os.listdir(tmp_path)


def smallest(variants: dict) -> str:
    return measure.recommend(variants, "smallest", "float32", 2.0)[0]


def test_gate_rejects_variants_losing_more_than_the_threshold():
    variants = {"float32": {"test_accuracy": 0.90, "size_bytes": 800},
                "fp16": {"test_accuracy": 0.90, "size_bytes": 400},
                "dynamic_int8": {"test_accuracy": 0.885, "size_bytes": 250},
                "int8": {"test_accuracy": 0.87, "size_bytes": 260}}
    measure.gate(0.90, variants, max_drop_points=2.0)
    assert smallest(variants) == "dynamic_int8"
    assert variants["int8"]["status"] == "rejected"
    assert variants["int8"]["accuracy_drop_points"] == pytest.approx(3.0)
    assert variants["dynamic_int8"]["status"] == "accepted"
    # a threshold set below a variant's measured drop rejects it
    measure.gate(0.90, variants, max_drop_points=1.0)
    assert smallest(variants) == "fp16" and variants["dynamic_int8"]["status"] == "rejected"
    measure.gate(0.90, variants, max_drop_points=5.0)
    assert smallest(variants) == "dynamic_int8"
    # equal sizes: the more accurate one
    tie = {"a": {"test_accuracy": 0.8, "size_bytes": 10}, "b": {"test_accuracy": 0.9,
                                                                "size_bytes": 10}}
    measure.gate(0.9, tie, max_drop_points=20)
    assert smallest(tie) == "b"
    with pytest.raises(ValueError, match="every variant lost more than"):
        measure.gate(0.99, {"int8": {"test_accuracy": 0.5, "size_bytes": 1}}, 1.0)


def test_the_recommendation_weighs_size_against_latency_by_policy():
    """The ants/bees case: int16x8 saves 0.12 MB over fp16 but runs 30x slower."""
    variants = {name: {"test_accuracy": 0.85, "size_bytes": size, "latency_ms_median": ms}
                for name, size, ms in [("float32", 880_000, 0.5), ("fp16", 470_000, 0.6),
                                       ("int16x8", 350_000, 19.0), ("int8", 320_000, 0.4)]}
    measure.gate(0.85, variants, max_drop_points=1.0)
    name, why = measure.recommend(variants, "balanced", "float32", 2.0)
    assert name == "int8" and "at most 2x as slow as float32 (1.00 ms/image" in why
    variants["int8"].update(test_accuracy=0.80)  # int8 rejected: fp16, not the slow int16x8
    measure.gate(0.85, variants, max_drop_points=1.0)
    assert measure.recommend(variants, "balanced", "float32", 2.0)[0] == "fp16"
    assert measure.recommend(variants, "balanced", "float32", 50.0)[0] == "int16x8"
    assert measure.recommend(variants, "smallest", "float32", 2.0)[0] == "int16x8"
    assert measure.recommend(variants, "fastest", "float32", 2.0)[0] == "float32"
    # only when the float reference itself is out (never in practice): the fastest accepted
    variants["float32"].update(status="rejected", latency_ms_median=0.1)
    name, why = measure.recommend(variants, "balanced", "float32", 2.0)
    assert name == "fp16" and "no accepted variant is within 2x" in why
    with pytest.raises(ValueError, match="unknown export.recommend 'tiny'"):
        measure.recommend(variants, "tiny", "float32", 2.0)


def test_latency_summary_reports_median_and_p90():
    summary = measure.latency_summary(np.arange(1, 11, dtype=float))
    assert summary == {"latency_ms_median": 5.5, "latency_ms_p90": pytest.approx(9.1)}


@pytest.mark.gpu
def test_tensorrt_engines_classify_like_keras(trained, tmp_path):
    """On a GPU: an engine from each ONNX precision (float, FP16, Q/DQ INT8) agrees with Keras."""
    from components.core.export import onnx_precision, tensorrt

    reason = tensorrt.unavailable_reason()
    if reason:
        pytest.skip(reason)
    classifier, _, test_images, _, train_images, train_labels = trained
    float_path, folded = str(tmp_path / "model.onnx"), str(tmp_path / "folded.onnx")
    onnx_export.export_onnx(classifier, float_path)
    onnx_precision.fold_constants(float_path, folded)
    calibration = train_images[calibrating.calibration_indices(train_labels, 64, seed=0)]
    sources = {"fp32": float_path}
    for variant in ONNX_VARIANTS:
        sources[variant] = str(tmp_path / f"model_{variant}.onnx")
        onnx_precision.convert(variant, folded, sources[variant], calibration)
    reference = classifier.predict(test_images, verbose=0)
    for precision, source in sources.items():
        engine = str(tmp_path / f"{precision}.engine")
        tensorrt.build_engine(source, engine, 32)
        with tensorrt.EngineClassifier(engine) as runner:
            probabilities = runner.predict(test_images)
        expected = onnx_export.predict_onnx(source, test_images)  # the same precision on the CPU
        assert measure.agreement(expected, probabilities)["top1_agreement"] >= 0.95, precision
        assert measure.agreement(reference, probabilities)["top1_agreement"] >= 0.9, precision


def test_calibration_sample_is_class_stratified():
    labels = np.array([0] * 90 + [1] * 10)
    images = np.arange(100)[:, None]
    sample = images[calibrating.calibration_indices(labels, 20, seed=0)][:, 0]
    assert len(set(sample)) == 20
    assert (labels[sample] == 1).sum() == 10  # the rare class is fully represented
    assert images[calibrating.calibration_indices(labels, 500, seed=0)].shape[0] == 100


def test_unknown_variant_is_an_error(trained):
    with pytest.raises(ValueError, match="unknown TFLite variant"):
        tflite.tflite_bytes(str(trained[1] / "saved_model"), "int4", np.zeros((1, 32, 32, 3)))


def test_calibration_images_come_from_the_training_split_only(tmp_path):
    splits = {name: (np.full((12, 2, 2, 3), value, np.uint8), np.arange(12) % 3)
              for value, name in enumerate(("train", "val", "test"))}
    folder = write_image_cache(tmp_path / "images", splits)
    images = calibrating.calibration_images(folder, 6, seed=42)
    assert images.shape == (6, 2, 2, 3) and (images == 0).all()


MEMORY_PROBE = """
import sys
from components.core.data import cache
from components.core.export import calibration

def status(field):  # kB, of this process's own address space (not inherited over fork/exec)
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))

folder, how = sys.argv[1:3]
for batch in cache.SplitImages(folder, "train").batches():  # TensorFlow's own buffers warm
    pass
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak (VmHWM) starts again from now
before = status("VmRSS")
if how == "calibration":
    images = calibration.calibration_images(folder, 200, seed=42)
else:
    images, _ = cache.read_arrays(folder, "train")
print((status("VmHWM") - before) * 1024)
"""


@pytest.mark.slow  # more than 10 s: whole trainings or several processes
def test_calibration_reads_its_sample_without_holding_the_split(tmp_path):
    """Peak memory of drawing 200 calibration images (10 MB) from a 390 MB training split stays
    far below the split's size; loading the split, measured the same way, does not."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (8000, 128, 128, 3), dtype=np.uint8)
    labels = np.arange(8000) % 3
    folder = write_image_cache(tmp_path / "images", {"train": (train, labels),
                                                     "test": (train[:3], labels[:3])})
    split_bytes = train.nbytes
    del train

    def growth(how):
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, folder, how], cwd=ROOT,
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
        return int(done.stdout.split()[-1])

    assert growth("read_arrays") > split_bytes  # the probe sees a split held whole
    assert growth("calibration") < split_bytes / 4  # measured: 10 MB of images + batches


@pytest.mark.slow  # more than 10 s: whole trainings or several processes
def test_a_mirror_averaged_model_is_mirror_invariant_in_every_format(trained, tmp_path):
    """model.mirror_average: the shipped model averages each image with its mirror image, and
    the .keras file, the TFLite files (float and full integer) and ONNX all do the same: a
    picture and its mirror image get the same answer."""
    classifier, _, images, _, train_images, train_labels = trained
    backbone, head = classifier.get_layer("backbone"), classifier.get_layer("head")
    mirror = models.attach(backbone, "tf", 32, head, mirror_average=True)
    models.save(mirror, str(tmp_path / "model.keras"))
    loaded = models.load(str(tmp_path / "model.keras"))  # safe_mode: no Lambda layer
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    reference = loaded.predict(images, verbose=0)
    np.testing.assert_allclose(reference, mirror.predict(images, verbose=0), atol=1e-6)
    np.testing.assert_allclose(loaded.predict(mirrored, verbose=0), reference, atol=1e-5)
    plain = classifier.predict(images, verbose=0)
    assert not np.allclose(plain, reference, atol=1e-3)
    # the plain model answers a mirrored digit differently often enough for int8 to show it
    # (0.76 here), so int8's mirror agreement below tells averaging from its absence
    plain_flip = measure.agreement(plain, classifier.predict(mirrored, verbose=0))
    assert plain_flip["top1_agreement"] < INT8_AGREEMENT
    tflite.export_saved_model(loaded, str(tmp_path / "saved_model"))
    calibration = train_images[calibrating.calibration_indices(train_labels, 200, seed=0)]
    for variant in ("float32", "int8"):
        path = str(tmp_path / f"{variant}.tflite")
        with open(path, "wb") as handle:
            handle.write(tflite.tflite_bytes(str(tmp_path / "saved_model"), variant,
                                             calibration))
        probabilities, _ = tflite.predict_tflite(path, images)
        flipped, _ = tflite.predict_tflite(path, mirrored)
        if variant == "float32":
            np.testing.assert_allclose(flipped, probabilities, atol=1e-5)
        else:  # int8 resizing rounds a mirrored picture a little differently
            assert measure.agreement(probabilities, flipped)["top1_agreement"] >= INT8_AGREEMENT
        assert measure.agreement(reference, probabilities)["top1_agreement"] >= INT8_AGREEMENT
    onnx_export.export_onnx(loaded, str(tmp_path / "model.onnx"))
    np.testing.assert_allclose(onnx_export.predict_onnx(str(tmp_path / "model.onnx"), images),
                               reference, atol=1e-4)
