"""What people read to decide whether a run ships: a self-contained HTML report (charts as
inline SVG, thumbnails as data: URIs, no scripts, no external fonts or files), a Markdown model
card, and a plain-text summary for the terminal. All three render one `evaluation` dict, written
by the evaluate step (and completed with the exported formats by the report step).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import unicodedata

import numpy as np

from components.core import storage
from components.core.data import SPLITS
from components.core.export import TFLITE_VARIANTS

EVALUATION = "evaluation.json"
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


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
                             "tflite": quantized["variants"], **converted}
    return record


def thumbnail(image: np.ndarray, side: int = 96) -> str:
    """A uint8 RGB image (H, W, 3) as a PNG data URI, at most `side` pixels on its longer side."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interval(bounds) -> str:
    return f"{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%" if bounds else "-"


def line_chart(series: dict, title: str, x_label: str, width: int = 440,
               height: int = 240) -> str:
    """An inline SVG line chart of `series` ({name: (xs, ys)}); empty series are left out."""
    series = {name: (list(xs), list(ys)) for name, (xs, ys) in series.items() if len(xs)}
    if not series:
        return f"<p class='muted'>{_escape(title)}: no data</p>"
    xs = [x for x_values, _ in series.values() for x in x_values]
    ys = [y for _, y_values in series.values() for y in y_values]
    left, right, top, bottom = 48, 12, 24, 36
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_low, y_high = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def point(x, y):
        return (left + (x - x_low) / (x_high - x_low) * (width - left - right),
                top + (1 - (y - y_low) / (y_high - y_low)) * (height - top - bottom))

    parts = [f"<svg role='img' aria-label='{_escape(title)}' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' xmlns='http://www.w3.org/2000/svg'>",
             f"<text x='{left}' y='14' class='title'>{_escape(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' "
             f"height='{height - top - bottom}' fill='none' stroke='#ccc'/>",
             f"<text x='{left}' y='{height - 6}' class='axis'>{_escape(x_label)} "
             f"{x_low:g}-{x_high:g}</text>",
             f"<text x='4' y='{top + 10}' class='axis'>{y_high:.3g}</text>",
             f"<text x='4' y='{height - bottom}' class='axis'>{y_low:.3g}</text>"]
    for index, (name, (x_values, y_values)) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in map(point, x_values, y_values))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' "
                     f"points='{path}'/>")
        parts.append(f"<text x='{width - right - 110}' y='{top + 14 + 14 * index}' "
                     f"fill='{colour}' class='axis'>{_escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def reliability_chart(bins: list, width: int = 300, height: int = 260) -> str:
    """An inline SVG reliability diagram: accuracy per confidence bin against the diagonal."""
    side = min(width, height) - 50
    left, top = 40, 20
    parts = [f"<svg role='img' aria-label='reliability diagram' width='{width}' "
             f"height='{height}' xmlns='http://www.w3.org/2000/svg'>",
             f"<rect x='{left}' y='{top}' width='{side}' height='{side}' fill='none' "
             f"stroke='#ccc'/>",
             f"<line x1='{left}' y1='{top + side}' x2='{left + side}' y2='{top}' "
             f"stroke='#999' stroke-dasharray='4'/>"]
    for entry in bins:
        x = left + entry["lower"] * side
        bar = entry["accuracy"] * side
        parts.append(f"<rect x='{x:.1f}' y='{top + side - bar:.1f}' "
                     f"width='{(entry['upper'] - entry['lower']) * side - 1:.1f}' "
                     f"height='{bar:.1f}' fill='#1f77b4' opacity='0.8'>"
                     f"<title>{entry['count']} images, confidence {entry['confidence']:.2f}, "
                     f"accuracy {entry['accuracy']:.2f}</title></rect>")
    parts.append(f"<text x='{left}' y='{top + side + 16}' class='axis'>confidence 0-1</text>"
                 f"<text x='2' y='{top + 10}' class='axis'>acc</text></svg>")
    return "".join(parts)


def confusion_table(classes: list, matrix: list) -> str:
    """The confusion matrix as a heat-map table (cell shade: share of the true class's row)."""
    rows = ["<table class='confusion'><tr><th>true \\ predicted</th>" +
            "".join(f"<th>{_escape(name)}</th>" for name in classes) + "</tr>"]
    for name, counts in zip(classes, matrix):
        total = max(sum(counts), 1)
        cells = "".join(
            f"<td style='background: rgba(31,119,180,{count / total:.2f}); color: "
            f"{'#fff' if count / total > 0.5 else '#000'}'>{count}</td>" for count in counts)
        rows.append(f"<tr><th>{_escape(name)}</th>{cells}</tr>")
    return "".join(rows) + "</table>"


def formats_rows(evaluation: dict) -> list[dict]:
    """Every shipped format: name, test accuracy, size (bytes), CPU latency, status."""
    exports = evaluation.get("exports") or {}
    rows = [{"format": "keras (float32)", "test_accuracy": evaluation["metrics"]["accuracy"],
             "size_bytes": exports.get("saved_model_size_bytes"), "latency_ms_median": None,
             "latency_ms_p90": None, **exports.get("keras_latency", {}),
             "status": "reference"}]
    tflite = exports.get("tflite") or {}
    for name, figures in sorted(tflite.items(), key=lambda item: TFLITE_VARIANTS.index(item[0])):
        recommended = " (recommended)" if name == exports.get("recommended") else ""
        rows.append({"format": f"tflite {name}", **figures,
                     "status": figures.get("status", "") + recommended})
    for name in ("onnx", "onnx_fp16", "onnx_int8", "tensorrt"):
        figures = exports.get(name)
        if figures:
            recommended = " (recommended)" if name == exports.get("recommended_onnx") else ""
            rows.append({"format": name, **figures,
                         "status": figures.get("status", "built") + recommended})
    return rows


def _formats_table(evaluation: dict) -> str:
    if not evaluation.get("exports"):
        return ("<p class='muted'>No exported formats yet: the model was not blessed, or this "
                "is the evaluate step's report (the report step adds them).</p>")
    lines = ["<table><tr><th>format</th><th>test accuracy</th><th>size</th>"
             "<th>CPU latency (median / p90, batch 1)</th><th>status</th></tr>"]
    for row in formats_rows(evaluation):
        size = f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "-"
        latency = (f"{row['latency_ms_median']:.2f} / {row['latency_ms_p90']:.2f} ms"
                   if row.get("latency_ms_median") is not None else "-")
        accuracy = _percent(row.get("test_accuracy"))
        detail = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        lines.append(f"<tr><td>{_escape(row['format'])}</td><td>{accuracy}</td><td>{size}</td>"
                     f"<td>{latency}</td><td>{_escape(detail)}</td></tr>")
    return "".join(lines) + "</table>"


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


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd;
padding: 4px 8px; text-align: right; } th { background: #f4f4f4; }
.verdict { padding: 10px 14px; border-radius: 6px; font-weight: bold; }
.yes { background: #e3f4e3; } .no { background: #fbe3e3; }
.tiles span { display: inline-block; margin: 4px 12px 4px 0; } .muted { color: #777; }
.wrong { display: inline-block; width: 120px; margin: 4px; font-size: 12px;
text-align: center; vertical-align: top; } .wrong img { width: 96px; height: 96px;
image-rendering: pixelated; border: 2px solid #d62728; }
svg { margin: 4px 12px 4px 0; } svg .title { font-size: 13px; } svg .axis { font-size: 11px; }
"""


def render_html(evaluation: dict) -> str:
    """The whole report as one self-contained HTML document."""
    metrics, classes = evaluation["metrics"], evaluation["classes"]
    intervals = evaluation.get("intervals", {})
    tiles = [("accuracy", f"{_percent(metrics['accuracy'])} "
                          f"(95% CI {_interval(intervals.get('accuracy'))})"),
             ("macro F1", f"{metrics['macro_f1']:.3f}"),
             ("weighted F1", f"{metrics['weighted_f1']:.3f}"),
             ("ROC AUC (one-vs-rest)", "-" if metrics["roc_auc_ovr"] is None
              else f"{metrics['roc_auc_ovr']:.3f}"),
             ("log loss", f"{metrics['log_loss']:.3f}"),
             ("calibration error (ECE)", f"{metrics['expected_calibration_error']:.3f}"),
             *[(f"top-{k}", _percent(metrics[f"top_{k}_accuracy"])) for k in (3, 5)
               if f"top_{k}_accuracy" in metrics],
             ("test images", metrics["examples"])]
    per_class = ["<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                 "<th>ROC AUC</th><th>support</th>"
                 + ("<th>baseline recall</th>" if evaluation.get("baseline") else "") + "</tr>"]
    for name in classes:
        scores = metrics["per_class"][name]
        baseline = evaluation.get("baseline")
        extra = (f"<td>{_percent(baseline['metrics']['per_class'][name]['recall'])}</td>"
                 if baseline else "")
        auc = "-" if scores["roc_auc"] is None else f"{scores['roc_auc']:.3f}"
        per_class.append(f"<tr><th>{_escape(name)}</th><td>{_percent(scores['precision'])}</td>"
                         f"<td>{_percent(scores['recall'])}</td><td>{scores['f1']:.3f}</td>"
                         f"<td>{auc}</td><td>{scores['support']}</td>{extra}</tr>")
    per_class.append("</table>")
    wrong = "".join(
        f"<div class='wrong'><img alt='test image {item['index']}' src='{item['thumbnail']}'>"
        f"<br>true <b>{_escape(item['true'])}</b><br>predicted <b>{_escape(item['predicted'])}"
        f"</b> {100 * item['confidence']:.0f}%</div>" for item in evaluation.get("wrong", []))
    checks = "".join(f"<li>{'passed' if c['passed'] else 'FAILED'}: {_escape(c['detail'])}</li>"
                     for c in evaluation["checks"])
    data = evaluation["data"]
    blessed = evaluation["blessed"]
    return "".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>tlpipe evaluation report</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>tlpipe evaluation: {_escape(evaluation['model']['backbone'])} on "
        f"{_escape(data['source'])}</h1>",
        f"<p class='verdict {'yes' if blessed else 'no'}'>"
        f"{'BLESSED' if blessed else 'NOT BLESSED'}: {_escape(evaluation['blessing_reason'])}"
        f"</p><ul>{checks}</ul>",
        "<div class='tiles'>" + "".join(f"<span>{_escape(k)}: <b>{_escape(v)}</b></span>"
                                        for k, v in tiles) + "</div>",
        "<h2>Training curves</h2>", _curves(evaluation.get("training", {})),
        "<h2>Confusion matrix (test split)</h2>",
        confusion_table(classes, metrics["confusion_matrix"]),
        "<h2>Per class</h2>", "".join(per_class),
        "<h2>Most confidently wrong test images</h2>",
        wrong or "<p class='muted'>No test image was misclassified.</p>",
        "<h2>Calibration</h2>", reliability_chart(metrics["reliability"]),
        f"<p>Expected calibration error {metrics['expected_calibration_error']:.3f} "
        f"(bars: accuracy per confidence bin; dashed: perfect calibration).</p>",
        "<h2>Exported formats</h2>", _formats_table(evaluation),
        f"<p class='muted'>Data fingerprint {_escape(data['fingerprint'])}; weights: "
        f"{_escape(evaluation['model']['weights'])} ({_escape(evaluation['model']['detail'])})"
        f"</p></body></html>"])


def render_model_card(evaluation: dict) -> str:
    """A Markdown model card: data, weights provenance, training, results with intervals,
    intended use and known limits."""
    metrics, data, model = evaluation["metrics"], evaluation["data"], evaluation["model"]
    intervals = evaluation.get("intervals", {})
    tune = (evaluation.get("training") or {}).get("finetune") or {}
    head = (evaluation.get("training") or {}).get("head") or {}
    weights = {"imagenet": "ImageNet-pretrained (Keras)", "file": "pretrained, from a file",
               "random": "RANDOM initialisation: nothing was transferred; the whole network "
                         "was trained on this data only"}.get(model["weights"], model["weights"])
    ordered = [(split, data["counts"][split]) for split in SPLITS if split in data["counts"]]
    counts = " / ".join(f"{split} {sum(c.values())}" for split, c in ordered)
    lines = [
        f"# Model card: {', '.join(evaluation['classes'])} classifier", "",
        f"**Verdict:** {'blessed' if evaluation['blessed'] else 'not blessed'}: "
        f"{evaluation['blessing_reason']}", "",
        "## Data", "",
        f"- Source: `{data['source']}`; content fingerprint `{data['fingerprint']}`",
        f"- Images: {counts}; per class: "
        + "; ".join(f"{split}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                    for split, c in ordered),
        f"- Skipped files: {len(data.get('skipped', []))}"
        + "".join(f"\n  - `{item['path']}`: {item['reason']}"
                  for item in data.get("skipped", [])[:20]),
        f"- Converted to 8-bit RGB: {len(data.get('converted', []))}"
        + "".join(f"\n  - `{item['path']}`: {item['conversion']}"
                  for item in data.get("converted", [])[:20]),
        "", "## Model", "",
        f"- Backbone: `{model['backbone']}` at {model['image_size']} px; weights: {weights} "
        f"({model['detail']})",
        f"- Head: softmax regression on cached features, L2 {head.get('l2', '-')}, "
        f"{head.get('steps_run', '-')} full-batch steps",
        f"- Fine-tuning: {tune.get('mode', '-')}; shipped: {tune.get('chosen', '-')} "
        f"({tune.get('reason', '-')}); trained layers: {len(tune.get('trained_layers', []))}"
        + (f"; backbone computed in {tune['precision']}, XLA {'on' if tune['xla'] else 'off'}"
           if "precision" in tune else ""),
        "", "## Results (test split)", "",
        f"- Accuracy {_percent(metrics['accuracy'])} (95% bootstrap interval "
        f"{_interval(intervals.get('accuracy'))}, {intervals.get('samples', '-')} resamples of "
        f"{metrics['examples']} images)",
        f"- Macro F1 {metrics['macro_f1']:.3f} (95% interval "
        f"{intervals.get('macro_f1', [0, 0])[0]:.3f}-{intervals.get('macro_f1', [0, 0])[1]:.3f})"
        f"; log loss {metrics['log_loss']:.3f}; ECE {metrics['expected_calibration_error']:.3f}",
        "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
        *[f"| {name} | {_percent(s['precision'])} | {_percent(s['recall'])} | {s['f1']:.3f} | "
          f"{s['support']} |" for name, s in metrics["per_class"].items()]]
    if evaluation.get("baseline"):
        baseline = evaluation["baseline"]
        lines += ["", f"Baseline `{baseline['uri']}`: accuracy "
                      f"{_percent(baseline['metrics']['accuracy'])} on the same test images."]
    if evaluation.get("exports"):
        lines += ["", "| format | test accuracy | size | latency median / p90 | status |",
                  "|---|---|---|---|---|"]
        for row in formats_rows(evaluation):
            size = f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "-"
            latency = (f"{row['latency_ms_median']:.2f} / {row['latency_ms_p90']:.2f} ms"
                       if row.get("latency_ms_median") is not None else "-")
            lines.append(f"| {row['format']} | {_percent(row.get('test_accuracy'))} | {size} | "
                         f"{latency} | {row['status']} |")
    lines += [
        "", "## Intended use", "",
        f"Classifying images like the training data into: {', '.join(evaluation['classes'])}. "
        "Every exported format takes raw RGB uint8 images of any size.", "",
        "## Known limits", "",
        "- Measured on one held-out test split of the same source: images from another camera, "
        "place or time may score lower.",
        f"- The interval above reflects test-set size only ({metrics['examples']} images); "
        "it says nothing about data drift.",
        "- Classes outside the list are still assigned one of them: there is no 'other'.",
    ]
    if model["weights"] == "random":
        lines.append("- No pretrained weights were used: expect far lower accuracy than a "
                     "transfer-learned model.")
    return "\n".join(lines) + "\n"


def summary_text(evaluation: dict) -> str:
    """The terminal summary `tlpipe report` prints."""
    metrics, intervals = evaluation["metrics"], evaluation.get("intervals", {})
    lines = [f"{'BLESSED' if evaluation['blessed'] else 'NOT BLESSED'}: "
             f"{evaluation['blessing_reason']}",
             f"test accuracy {_percent(metrics['accuracy'])} (95% CI "
             f"{_interval(intervals.get('accuracy'))}) on {metrics['examples']} images; macro "
             f"F1 {metrics['macro_f1']:.3f}; log loss {metrics['log_loss']:.3f}; ECE "
             f"{metrics['expected_calibration_error']:.3f}"]
    for name, scores in metrics["per_class"].items():
        lines.append(f"  {name:>16}: precision {_percent(scores['precision'])}, recall "
                     f"{_percent(scores['recall'])}, support {scores['support']}")
    for row in formats_rows(evaluation)[1:]:
        size = f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "-"
        lines.append(f"  {row['format']:>19}: {_percent(row.get('test_accuracy'))}, {size}, "
                     f"{row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""))
    return "\n".join(lines)


def render_data_report(manifest: dict) -> str:
    """The ingest step's validation report (Markdown): counts per class and split, imbalance,
    image sizes, and every file skipped, converted, renamed-worthy or left out of test."""
    classes, counts = manifest["classes"], manifest["counts"]
    splits = [split for split in SPLITS if split in counts]
    sizes = manifest["image_sizes"]
    lines = [f"# Data report: {_md_text(manifest['source'])}", "",
             f"Fingerprint `{manifest['fingerprint']}` (same files and seed, same fingerprint).",
             "", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits),
             *[f"| {_md_text(label)} | " + " | ".join(str(counts[s][label]) for s in splits)
               + " |"
               for label in classes],
             "| **all** | " + " | ".join(str(sum(counts[s].values())) for s in splits) + " |",
             "", f"Class imbalance (largest / smallest training class): "
                 f"{manifest['imbalance_ratio']}",
             f"Image sizes (pixels): width {sizes['min_width']}-{sizes['max_width']} (median "
             f"{sizes['median_width']}), height {sizes['min_height']}-{sizes['max_height']} "
             f"(median {sizes['median_height']})"]
    sections = (
        ("Skipped", manifest["skipped"], "reason"),
        ("Converted to 8-bit RGB", manifest["converted"], "conversion"),
        ("Left out of the test split", manifest.get("excluded_from_test", []), "reason"))
    for title, entries, key in sections:
        lines += ["", f"## {title}: {len(entries)}", ""]
        lines += [f"- {_md_code(entry['path'])}: {_md_text(entry[key])}" for entry in entries]
    few = manifest.get("few_colours", [])
    lines += ["", f"## Possible placeholders or graphics (at most 64 colours): {len(few)}", "",
              "Kept; look at them: a photo has thousands of colours.", ""]
    lines += [f"- {_md_code(entry['path'])}: {entry['colours']} colours" for entry in few[:50]]
    if len(few) > 50:
        lines.append(f"- ... and {len(few) - 50} more (manifest.json lists them all)")
    conflicts = manifest["label_conflicts"]
    lines += ["", f"## Same image under different classes: {len(conflicts)}", ""]
    lines += [f"- {', '.join(_md_code(path) for path in c['paths'])}" for c in conflicts]
    odd = manifest.get("odd_names", [])
    lines += ["", f"## File names with spaces or other special characters: {len(odd)}",
              "", "Read as they are; listed because other tools may trip on them.", ""]
    lines += [f"- {_md_code(path)}" for path in odd]
    return "\n".join(lines) + "\n"


def _visible(text: str) -> str:
    """`text` with control characters (a newline in a file name, say) written as escapes."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char
                   for char in str(text))


def _md_text(text) -> str:
    """Plain text inside one Markdown line or table cell: control characters escaped, pipes and
    the characters Markdown reads as inline markup there backslash-escaped."""
    return re.sub(r"([\\`*_\[\]<|])", r"\\\1", _visible(text))


def _md_code(text) -> str:
    """A file name as inline code: control characters escaped, and a backtick fence longer
    than any run of backticks in the name (CommonMark), padded when it starts or ends with one."""
    shown = _visible(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"
