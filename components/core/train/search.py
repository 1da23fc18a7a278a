"""The fine-tuning search: the trials `finetune.search` asks for, and which one to ship.

Pure functions on config dicts and finetune.json reports (no TensorFlow, no KFP): the pipeline
compiles one fine-tune task per trial (a ParallelFor) and its pick step calls `best`.
"""

from __future__ import annotations

import itertools

# finetune.search list -> the FinetuneConfig field each of its values sets
SEARCHED = (("learning_rates", "learning_rate"), ("unfreeze_fractions", "unfreeze_fraction"),
            ("epochs", "epochs"))


def trials(search) -> list[dict]:
    """The trials of a SearchConfig: one dict of finetune overrides (e.g. {"learning_rate":
    3e-4, "unfreeze_fraction": 0.5}) per combination of its non-empty lists, in the lists'
    order; [] when every list is empty (no search)."""
    axes = [(name, list(getattr(search, listed))) for listed, name in SEARCHED
            if getattr(search, listed)]
    if not axes:
        return []
    names = [name for name, _ in axes]
    return [dict(zip(names, values))
            for values in itertools.product(*(values for _, values in axes))]


def label(recipe: dict) -> str:
    """A trial's short name from the recipe its fine-tune report records (the searched
    settings' values), e.g. "learning_rate=0.0003 unfreeze_fraction=0.5 epochs=28"."""
    return " ".join(f"{name}={recipe[name]:g}" for _, name in SEARCHED)


def shipped_val(report: dict) -> dict:
    """The val figures ({"loss", "accuracy"}) of the model a fine-tune report ships."""
    return report["finetuned_val"] if report["chosen"] == "finetuned" else report["head_only_val"]


def best(reports: list[dict]) -> int:
    """Index of the report (finetune.json of each trial, same val images) whose shipped model
    has the lowest val cross-entropy; ties go to the higher val accuracy, then the first. Val
    loss rather than accuracy: on a small val set it separates trials that accuracy ties."""
    return min(range(len(reports)), key=lambda index: (
        shipped_val(reports[index])["loss"], -shipped_val(reports[index])["accuracy"], index))
