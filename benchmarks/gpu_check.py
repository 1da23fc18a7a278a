"""The GPU check: on a machine with an NVIDIA GPU and TensorRT (the tlpipe-tensorrt image, or
`pip install ".[gpu,export,tensorrt]"`), one command that runs what this repository's CPU
machines cannot, in about 10 minutes:

1. `tlpipe run` on the hymenoptera photos (MobileNet v1 0.25, 160 px, the ImageNet weights file)
   with `--tensorrt-precision fp16`: the pipeline's own tensorrt step builds and evaluates an
   engine, so the step itself is checked, not only the library calls.
2. An engine from each ONNX precision of that run (float32, FP16, Q/DQ INT8): test accuracy
   beside Keras and beside the same ONNX on the CPU, and latency at batch 1 and batch 32.
3. Fine-tuning step time of that backbone and head in mixed_bfloat16 vs float32 (the pipeline's
   `finetune.precision: auto` picks mixed on compute capability >= 8.0), as a ratio.

Usage: bash benchmarks/gpu_check.sh [--data DIR] [--weights FILE] [--output DIR]
Exit 0 when everything ran, 2 when there is no GPU or TensorRT here (with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's components/, installed or not
SHARED = os.path.join(HERE, "..", "..", "shared")
PRECISIONS = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
TIMED_STEPS = 20  # fine-tuning steps timed per precision, after 3 warm-up steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "data", "hymenoptera_data"))
    parser.add_argument("--weights",
                        default=os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5"))
    parser.add_argument("--output", default="gpu-check-run")
    args = parser.parse_args(argv)
    from components.core.export import tensorrt

    reason = tensorrt.unavailable_reason()
    if reason:
        print(f"gpu_check: cannot run here: {reason}", file=sys.stderr)
        return 2
    outputs = run_pipeline(args.data, args.weights, args.output)
    print(step_engine_line(outputs))
    print(engine_table(outputs))
    print(finetune_timing(args.weights))
    return 0


def run_pipeline(data: str, weights: str, output: str) -> dict:
    """Runs the whole pipeline with an FP16 engine; returns where each step's artifacts are,
    {(step, artifact): path}."""
    command = ["tlpipe", "run", "--data", data, "--backbone", "mobilenet", "--alpha", "0.25",
               "--image-size", "160", "--weights", weights, "--output", output,
               "--tensorrt-precision", "fp16"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    with open(os.path.join(output, "summary.json")) as handle:
        steps = json.load(handle)["steps"]
    return {(step, name): artifact["path"] for step, entry in steps.items()
            for name, artifact in entry["outputs"].items()}


def step_engine_line(outputs: dict) -> str:
    with open(os.path.join(outputs["tensorrt", "onnx"], "tensorrt.json")) as handle:
        facts = json.load(handle)["tensorrt"]
    if facts["status"] != "built":
        return f"pipeline tensorrt step: {facts['status']}: {facts.get('reason')}"
    return (f"pipeline tensorrt step: built {facts['onnx']} with {facts['api']} (TensorRT "
            f"{facts['tensorrt_version']}): test accuracy {facts['test_accuracy']:.4f}, "
            f"top-1 agreement with Keras {facts['top1_agreement']:.3f}")


def engine_table(outputs: dict) -> str:
    """One engine per ONNX precision of the run, evaluated on its test split."""
    from components.core.data import cache
    from components.core.export import measure, onnx as onnx_export, tensorrt
    from components.core.train import model as models

    onnx_dir = outputs["tensorrt", "onnx"]
    images, labels = cache.read_arrays(outputs["preprocess", "images"], "test")
    keras_model = models.load(os.path.join(outputs["finetune", "model"], "model.keras"))
    reference = keras_model.predict(images, batch_size=64, verbose=0)
    lines = [f"keras float32: test accuracy {np.mean(reference.argmax(1) == labels):.4f}",
             "| engine | from | test acc | agree w/ Keras | agree w/ same ONNX on CPU | "
             "batch 1 ms | batch 32 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for precision, name in PRECISIONS.items():
        source = os.path.join(onnx_dir, name)
        engine_path = os.path.join(onnx_dir, f"check_{precision}.engine")
        tensorrt.build_engine(source, engine_path, images.shape[1])
        with tensorrt.EngineClassifier(engine_path) as engine:
            probabilities = engine.predict(images)
            _, single = measure.timed(lambda image: engine.predict(image[None])[0], images[:100])
            batch32 = measure.batch_latency(engine.predict, images, 32, repeats=20)
        cpu = onnx_export.predict_onnx(source, images)
        lines.append(f"| {precision} | {name} | {np.mean(probabilities.argmax(1) == labels):.4f}"
                     f" | {measure.agreement(reference, probabilities)['top1_agreement']:.3f} | "
                     f"{measure.agreement(cpu, probabilities)['top1_agreement']:.3f} | "
                     f"{np.median(single):.3f} | {batch32:.3f} |")
    return "\n".join(lines)


def finetune_timing(weights: str) -> str:
    """Seconds per fine-tuning step (batch 32, 160 px, whole backbone trainable) in each
    precision, run in fresh processes so the dtype policies do not mix."""
    seconds = {policy: float(subprocess.run(
        [sys.executable, __file__, "--time-steps", policy, weights], check=True,
        capture_output=True, text=True).stdout.split()[-1])
        for policy in ("float32", "mixed_bfloat16")}
    return (f"fine-tune step (batch 32, 160 px): float32 {seconds['float32'] * 1000:.1f} ms, "
            f"mixed_bfloat16 {seconds['mixed_bfloat16'] * 1000:.1f} ms: mixed is "
            f"{seconds['float32'] / seconds['mixed_bfloat16']:.2f}x faster")


def time_steps(policy: str, weights: str) -> float:
    """Median seconds of one training step of backbone + softmax head under Keras dtype
    `policy`, after 3 warm-up steps."""
    import keras

    from components.core.config import backbones
    from components.core.train import model as models

    keras.mixed_precision.set_global_policy(policy)
    spec = backbones.get("mobilenet")
    backbone = models.build_backbone(spec, 160, 0.25, weights)
    head = keras.Sequential([keras.layers.Dense(2, activation="softmax", dtype="float32")])
    classifier = models.attach(backbone, spec.preprocess_mode, 160, head)
    classifier.compile(optimizer=keras.optimizers.SGD(1e-4),
                       loss="sparse_categorical_crossentropy", jit_compile=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 160, 160, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 32)
    times = []
    for step in range(3 + TIMED_STEPS):
        started = time.perf_counter()
        classifier.train_on_batch(images, labels)
        times.append(time.perf_counter() - started)
    return float(np.median(times[3:]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--time-steps"]:
        print(time_steps(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(main())
