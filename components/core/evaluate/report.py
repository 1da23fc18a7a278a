"""What people read to decide whether a run ships: a self-contained HTML report (charts as
inline SVG, thumbnails as data: URIs, no scripts, no external fonts or files), rendered from
templates/report.html.j2. It, the model card and the terminal summary (card.py) render one
`evaluation` dict, written by the evaluate step (and completed with the exported formats by the
report step: `read_evaluation`).
"""

from __future__ import annotations

import os

from markupsafe import Markup

from components.core.evaluate.charts import line_chart, reliability_chart
from components.core.evaluate.formatting import interval, percent, score, templates
from components.core.export.tflite import TFLITE_VARIANTS
from components.core.io import storage

EVALUATION = "evaluation.json"


def read_evaluation(evaluation_dir: str, tflite_dir: str | None = None,
                    onnx_dir: str | None = None) -> dict:
    """The evaluate step's record, with the exported formats when both export artifacts are
    given (the quantize and tensorrt steps' facts)."""
    record = storage.read_json(os.path.join(evaluation_dir, EVALUATION))
    if tflite_dir and onnx_dir:
        quantized = storage.read_json(os.path.join(tflite_dir, "quantization.json"))
        converted = storage.read_json(os.path.join(onnx_dir, "tensorrt.json"))
        record["exports"] = {"saved_model_size_bytes": quantized["saved_model_size_bytes"],
                             "keras_latency": quantized["keras_latency"],
                             "recommended": quantized["recommended"],
                             "recommended_reason": quantized["recommended_reason"],
                             "tflite": quantized["variants"], **converted}
    return record


def formats_rows(evaluation: dict) -> list[dict]:
    """Every shipped format: name, test accuracy, size (bytes), CPU latency, status."""
    exports = evaluation.get("exports") or {}
    rows = [{"format": "keras (float32)", "test_accuracy": evaluation["metrics"]["accuracy"],
             "size_bytes": exports.get("saved_model_size_bytes"), "latency_ms_median": None,
             "latency_ms_p90": None, **exports.get("keras_latency", {}),
             "status": "reference"}]
    tflite = exports.get("tflite") or {}
    for name, figures in sorted(tflite.items(), key=lambda item: TFLITE_VARIANTS.index(item[0])):
        rows.append({"format": f"tflite {name}", **figures, "status": figures.get("status", "")
                     + _recommended(name, exports.get("recommended"),
                                    exports.get("recommended_reason"))})
    for name in ("onnx", "onnx_fp16", "onnx_int8", "tensorrt"):
        figures = exports.get(name)
        if figures:
            rows.append({"format": name, **figures, "status": figures.get("status", "built")
                         + _recommended(name, exports.get("recommended_onnx"),
                                        exports.get("recommended_onnx_reason"))})
    return rows


def _recommended(name: str, recommended: str | None, reason: str | None) -> str:
    """" (recommended: why)" on the recommended format's status, "" on the others."""
    if name != recommended:
        return ""
    return f" (recommended: {reason})" if reason else " (recommended)"


def _curves(training: dict) -> str:
    head = (training.get("head") or {}).get("history") or {}
    tune = (training.get("finetune") or {}).get("history") or {}
    epochs = list(range(1, len(tune.get("loss", [])) + 1))
    return "".join([
        line_chart({"train loss": (head.get("step", []), head.get("train_loss", [])),
                    "val loss": (head.get("step", []), head.get("val_loss", []))},
                   "head training (cached features)", "step"),
        line_chart({"train loss": (epochs, tune.get("loss", [])),
                    "val loss": (epochs, tune.get("val_loss", []))},
                   "fine-tuning loss", "epoch"),
        line_chart({"train accuracy": (epochs, tune.get("accuracy", [])),
                    "val accuracy": (epochs, tune.get("val_accuracy", []))},
                   "fine-tuning accuracy", "epoch")])


def render_html(evaluation: dict) -> str:
    """The whole report as one self-contained HTML document (templates/report.html.j2; every
    value from the record is HTML-escaped, the SVG charts are inserted as they are)."""
    metrics = evaluation["metrics"]
    intervals = evaluation.get("intervals", {})
    tiles = [("accuracy", f"{percent(metrics['accuracy'])} "
                          f"(95% CI {interval(intervals.get('accuracy'))})"),
             ("macro F1", f"{metrics['macro_f1']:.3f}"),
             ("weighted F1", f"{metrics['weighted_f1']:.3f}"),
             ("ROC AUC (one-vs-rest)", score(metrics["roc_auc_ovr"])),
             ("log loss", f"{metrics['log_loss']:.3f}"),
             ("calibration error (ECE)", f"{metrics['expected_calibration_error']:.3f}"),
             *[(f"top-{k}", percent(metrics[f"top_{k}_accuracy"])) for k in (3, 5)
               if f"top_{k}_accuracy" in metrics],
             ("test images", metrics["examples"])]
    confusion = [(name, [(count, count / max(sum(counts), 1)) for count in counts])
                 for name, counts in zip(evaluation["classes"], metrics["confusion_matrix"])]
    return templates().get_template("report.html.j2").render(
        **{"wrong": [], "baseline": None, "champion": None, **evaluation}, tiles=tiles,
        confusion=confusion,
        curves=Markup(_curves(evaluation.get("training", {}))),
        reliability=Markup(reliability_chart(metrics["reliability"])),
        formats=formats_rows(evaluation) if evaluation.get("exports") else [])
