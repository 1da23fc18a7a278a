"""The model card (Markdown) and the one-paragraph summary of an evaluation record."""

from __future__ import annotations

from components.core.data.discovery import SPLITS
from components.core.evaluate.formatting import interval, percent
from components.core.evaluate.report import formats_rows


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
        f"- Accuracy {percent(metrics['accuracy'])} (95% bootstrap interval "
        f"{interval(intervals.get('accuracy'))}, {intervals.get('samples', '-')} resamples of "
        f"{metrics['examples']} images)",
        f"- Macro F1 {metrics['macro_f1']:.3f} (95% interval "
        f"{intervals.get('macro_f1', [0, 0])[0]:.3f}-{intervals.get('macro_f1', [0, 0])[1]:.3f})"
        f"; log loss {metrics['log_loss']:.3f}; ECE {metrics['expected_calibration_error']:.3f}",
        "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
        *[f"| {name} | {percent(s['precision'])} | {percent(s['recall'])} | {s['f1']:.3f} | "
          f"{s['support']} |" for name, s in metrics["per_class"].items()]]
    if evaluation.get("baseline"):
        baseline = evaluation["baseline"]
        lines += ["", f"Baseline `{baseline['uri']}`: accuracy "
                      f"{percent(baseline['metrics']['accuracy'])} on the same test images."]
    if evaluation.get("exports"):
        lines += ["", "| format | test accuracy | size | latency median / p90 | status |",
                  "|---|---|---|---|---|"]
        for row in formats_rows(evaluation):
            size = f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "-"
            latency = (f"{row['latency_ms_median']:.2f} / {row['latency_ms_p90']:.2f} ms"
                       if row.get("latency_ms_median") is not None else "-")
            lines.append(f"| {row['format']} | {percent(row.get('test_accuracy'))} | {size} | "
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
             f"test accuracy {percent(metrics['accuracy'])} (95% CI "
             f"{interval(intervals.get('accuracy'))}) on {metrics['examples']} images; macro "
             f"F1 {metrics['macro_f1']:.3f}; log loss {metrics['log_loss']:.3f}; ECE "
             f"{metrics['expected_calibration_error']:.3f}"]
    for name, scores in metrics["per_class"].items():
        lines.append(f"  {name:>16}: precision {percent(scores['precision'])}, recall "
                     f"{percent(scores['recall'])}, support {scores['support']}")
    for row in formats_rows(evaluation)[1:]:
        size = f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "-"
        lines.append(f"  {row['format']:>19}: {percent(row.get('test_accuracy'))}, {size}, "
                     f"{row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""))
    return "\n".join(lines)
