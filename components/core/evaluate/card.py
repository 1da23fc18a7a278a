"""The model card (Markdown) and the one-paragraph summary of an evaluation record."""

from __future__ import annotations

from components.core.data.discovery import SPLITS
from components.core.evaluate.formatting import interval, percent, size, templates
from components.core.evaluate.report import formats_rows


def render_model_card(evaluation: dict) -> str:
    """A Markdown model card (templates/card.md.j2): data, weights provenance, training, results
    with intervals, exported formats, intended use and known limits."""
    data, training = evaluation["data"], evaluation.get("training") or {}
    weights = {"imagenet": "ImageNet-pretrained (Keras)", "file": "pretrained, from a file",
               "random": "RANDOM initialisation: nothing was transferred; the whole network "
                         "was trained on this data only"}
    return templates().get_template("card.md.j2").render(
        **{"baseline": None, "champion": None, "intervals": {}, **evaluation},
        weights=weights.get(evaluation["model"]["weights"], evaluation["model"]["weights"]),
        splits=[(split, data["counts"][split]) for split in SPLITS if split in data["counts"]],
        skipped=data.get("skipped", []), converted=data.get("converted", []),
        head=training.get("head") or {}, tune=training.get("finetune") or {},
        formats=formats_rows(evaluation) if evaluation.get("exports") else [])


def summary_text(evaluation: dict) -> str:
    """The terminal summary `tlpipe report` prints."""
    metrics, intervals = evaluation["metrics"], evaluation.get("intervals", {})
    lines = [f"{'BLESSED' if evaluation['blessed'] else 'NOT BLESSED'}: "
             f"{evaluation['blessing_reason']}",
             *([f"champion/challenger: {evaluation['champion']['text']}"]
               if evaluation.get("champion") else []),
             f"test accuracy {percent(metrics['accuracy'])} (95% CI "
             f"{interval(intervals.get('accuracy'))}) on {metrics['examples']} images; macro "
             f"F1 {metrics['macro_f1']:.3f}; log loss {metrics['log_loss']:.3f}; ECE "
             f"{metrics['expected_calibration_error']:.3f}"]
    for name, scores in metrics["per_class"].items():
        lines.append(f"  {name:>16}: precision {percent(scores['precision'])}, recall "
                     f"{percent(scores['recall'])}, support {scores['support']}")
    for row in formats_rows(evaluation)[1:]:
        lines.append(f"  {row['format']:>19}: {percent(row.get('test_accuracy'))}, {size(row)}, "
                     f"{row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""))
    return "\n".join(lines)
