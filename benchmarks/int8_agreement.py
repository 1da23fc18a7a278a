"""Where full-integer quantization loses agreement with the float model, on a tlpipe run's own
model and test images.

    python benchmarks/int8_agreement.py RUN_DIR [--label NAME] [--calibration 100 200 500]
        [--float-layers 0 2 4 8 16]

RUN_DIR is a `tlpipe run` folder (`OUTPUT/runs/<pipeline>-<timestamp>`). Measured, each as
top-1 agreement with the Keras model on the test split, test accuracy and file size:
- weights vs activations: dynamic-range INT8 (int8 weights, float activations), full INT8
  (int8 weights and activations) and 16x8 (int8 weights, int16 activations), as the quantize
  step builds them;
- calibration: full INT8 calibrated on N class-stratified training images, for each N;
- layers: TensorFlow Lite's quantization debugger on the calibration images ranks the layers by
  their own error (mean squared error of the layer's quantized output against its float output
  on the same input, over the error rounding alone would cause, scale^2 / 12); then the k worst
  layers are kept in float (`denylisted_nodes`, the rest full INT8), for each k.
Appends a section to benchmarks/INT8_RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import io
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def figures(path: str, images, labels, reference) -> str:
    """'agreement A, accuracy B, S KB' of the TFLite file at `path` on the test images."""
    import numpy as np

    from components.core.export import tflite

    probabilities, _ = tflite.predict_tflite(path, images)
    agreement = np.mean(probabilities.argmax(1) == reference.argmax(1))
    accuracy = np.mean(probabilities.argmax(1) == labels)
    return f"{agreement:.3f} | {accuracy:.4f} | {os.path.getsize(path) / 1024:.0f} KB"


def layer_errors(converter, calibration) -> list[dict]:
    """The quantization debugger's per-layer statistics, worst first, each with "ratio": its
    mean squared error over scale^2 / 12 (1 = rounding alone)."""
    import tensorflow as tf

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([image[None]] for image in calibration))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    for row in rows:
        scale = float(row["scale"])
        row["ratio"] = float(row["mean_squared_error"]) / (scale ** 2 / 12) if scale else 0.0
    return sorted(rows, key=lambda row: -row["ratio"])


def main(argv=None) -> int:
    import numpy as np
    import tensorflow as tf

    from components.core.data import cache
    from components.core.export import tflite
    from components.core.export.calibration import calibration_indices
    from components.core.train import model as models

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--calibration", type=int, nargs="+", default=[100, 200, 500])
    parser.add_argument("--float-layers", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--label", help="the section's title (default: the run folder's name)")
    parser.add_argument("--output", default=os.path.join(HERE, "INT8_RESULTS.md"))
    args = parser.parse_args(argv)
    model_dir = (glob.glob(os.path.join(args.run_dir, "pick-trial", "model"))
                 or glob.glob(os.path.join(args.run_dir, "finetune", "model")))[0]
    images_dir = os.path.join(args.run_dir, "preprocess", "images")
    model = models.load(os.path.join(model_dir, "model.keras"))
    images, labels = cache.read_arrays(images_dir, "test")
    train_images, train_labels = cache.read_arrays(images_dir, "train")
    reference = model.predict(images, batch_size=64, verbose=0)
    lines = [f"## {args.label or os.path.basename(os.path.normpath(args.run_dir))}", "",
             f"{datetime.date.today()}; `python benchmarks/int8_agreement.py RUN` on "
             f"{len(labels)} test images; float Keras test accuracy "
             f"{np.mean(reference.argmax(1) == labels):.4f}.", "",
             "| model | agreement with Keras | test accuracy | size |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        saved_model = os.path.join(scratch, "saved_model")
        tflite.export_saved_model(model, saved_model)
        path = os.path.join(scratch, "model.tflite")
        default = train_images[calibration_indices(train_labels, 200, args.seed)]
        for variant in ("fp16", "dynamic_int8", "int8", "int16x8"):
            with open(path, "wb") as handle:
                handle.write(tflite.tflite_bytes(saved_model, variant, default))
            lines.append(f"| {variant} (200 calibration images) | "
                         f"{figures(path, images, labels, reference)} |")
        for count in args.calibration:
            sample = train_images[calibration_indices(train_labels, count, args.seed)]
            with open(path, "wb") as handle:
                handle.write(tflite.tflite_bytes(saved_model, "int8", sample))
            lines.append(f"| int8, {len(sample)} calibration images | "
                         f"{figures(path, images, labels, reference)} |")
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in default)
        ranked = layer_errors(converter, default)
        for count in args.float_layers:
            options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=[row["tensor_name"] for row in ranked[:count]])
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_options=options,
                debug_dataset=lambda: ([image[None]] for image in default[:8]))
            with open(path, "wb") as handle:
                handle.write(debugger.get_nondebug_quantized_model())
            lines.append(f"| int8, the {count} worst layers in float | "
                         f"{figures(path, images, labels, reference)} |")
    lines += ["", "Layers by their own quantization error (mean squared error over "
              "scale^2 / 12, rounding alone = 1), worst first:", "",
              "| layer | op | error ratio |", "|---|---|---|",
              *[f"| `{row['tensor_name'].split(';')[-1][-70:]}` | {row['op_name']} "
                f"| {row['ratio']:.1f} |" for row in ranked[:10]], "", ""]
    title = [] if os.path.exists(args.output) else [
        "# Where full-integer quantization loses agreement with the float model", "",
        "Sections appended by `benchmarks/int8_agreement.py`, one per run.", ""]
    with open(args.output, "a", encoding="utf-8") as handle:
        handle.write("\n".join(title + lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
