"""The fine-tuning recipe chosen from the data and the backbone: how deep to unfreeze, the peak
learning rate, the epoch count, the warm-up, the crop strength and the class weighting.

Pure arithmetic on counts (no TensorFlow): `resolve` fills every setting a config leaves on
"auto" and says why, so finetune.json and the report show what was used and on what grounds.
The rules come from the common fine-tuning practice that benchmarks/ACCURACY_RESULTS.md measures
against (AdamW, a few thousand optimizer steps, warm-up then cosine to 0, last epoch kept) and
scale with the inputs, never with one dataset's numbers:
- depth: the share of the backbone that trains is capped by the data: one training image per
  PARAMETERS_PER_IMAGE trained parameters, never below the backbone's own default share;
- learning rate: BASE_LEARNING_RATE at BASE_BATCH for a backbone of REFERENCE_PARAMETERS or
  fewer; square-root scaling with the batch (Adam) and down by the square root of the size for
  larger backbones (large pretrained networks move less before they forget);
- epochs: about TARGET_IMAGES_SEEN images seen, within EPOCH_RANGE (small sets get more passes,
  large ones at least a few);
- crops: stronger (a smaller minimum crop) where a class has fewer images;
- class weights: square-root balanced where the largest class has IMBALANCE_RATIO times the
  smallest's images or more; below that, plain cross-entropy (measured on trashnet, 4.3x:
  balanced and square-root weights both lowered test accuracy and macro F1 by 1-2 points).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

BASE_LEARNING_RATE = 3e-4
BASE_BATCH = 32
REFERENCE_PARAMETERS = 4_000_000   # EfficientNetB0-sized and smaller: the full base rate
PARAMETERS_PER_IMAGE = 2_000
TARGET_IMAGES_SEEN = 50_000
EPOCH_RANGE = (4, 40)
WARMUP_SHARE = 0.07                # of the epochs, at least one epoch
CROP_BY_IMAGES_PER_CLASS = ((500, 0.6), (5000, 0.7))  # (fewer than N per class, min crop side)
LARGE_DATA_CROP = 0.8
IMBALANCE_RATIO = 10.0


@dataclass(frozen=True)
class Recipe:
    """What fine-tuning runs with. epochs >= 1; warmup_epochs in [0, epochs); learning_rate
    > 0 (peak, AdamW); unfreeze_fraction in (0, 1] of the backbone's layers from the top;
    min_crop_scale in (0, 1] (side share of the smallest random crop); class_weight "none",
    "sqrt" or "balanced". reasons: setting name -> one sentence saying where its value came from."""

    epochs: int
    warmup_epochs: int
    learning_rate: float
    unfreeze_fraction: float
    min_crop_scale: float
    class_weight: str
    reasons: dict


def resolve(tune, augment, loss, class_counts: list[int], backbone_parameters: int,
            default_unfreeze_fraction: float) -> Recipe:
    """The recipe for this run: every "auto" setting of `tune` (FinetuneConfig: epochs -1,
    learning_rate 0, warmup_epochs -1, unfreeze_fraction 0 with no unfreeze_from/layers),
    `augment` (min_crop_scale 0) and `loss` (class_weight "auto") chosen from the training
    counts per class, the backbone's parameter count and its default unfreeze share; a value
    set in the config is kept as it is. Only meaningful for pretrained backbones."""
    images, reasons = sum(class_counts), {}

    def pick(name, configured, automatic, why):
        reasons[name] = why if configured is None else "set in the config"
        return automatic if configured is None else configured

    auto_epochs = min(max(round(TARGET_IMAGES_SEEN / max(images, 1)), EPOCH_RANGE[0]),
                      EPOCH_RANGE[1])
    epochs = pick("epochs", None if tune.epochs < 0 else tune.epochs, auto_epochs,
                  f"about {TARGET_IMAGES_SEEN:,} images seen over {images:,} training images, "
                  f"within {EPOCH_RANGE[0]}-{EPOCH_RANGE[1]} epochs")
    warmup = pick("warmup_epochs", None if tune.warmup_epochs < 0 else tune.warmup_epochs,
                  min(max(1, round(WARMUP_SHARE * epochs)), max(epochs - 1, 0)),
                  f"{WARMUP_SHARE:.0%} of the epochs, at least one")
    size_factor = min(1.0, math.sqrt(REFERENCE_PARAMETERS / max(backbone_parameters, 1)))
    batch_factor = math.sqrt(tune.batch_size / BASE_BATCH)
    learning_rate = pick(
        "learning_rate", tune.learning_rate or None,
        BASE_LEARNING_RATE * batch_factor * size_factor,
        f"{BASE_LEARNING_RATE:g} x sqrt(batch {tune.batch_size} / {BASE_BATCH}) x "
        f"{size_factor:.2f} for a backbone of {backbone_parameters:,} parameters")
    data_share = images * PARAMETERS_PER_IMAGE / max(backbone_parameters, 1)
    fraction = pick(
        "unfreeze_fraction", tune.unfreeze_fraction or None,
        min(1.0, max(default_unfreeze_fraction, data_share)),
        f"one training image per {PARAMETERS_PER_IMAGE:,} trained parameters "
        f"({images:,} images, {backbone_parameters:,} parameters), at least the backbone's "
        f"default share {default_unfreeze_fraction:g}")
    crop = pick("min_crop_scale", augment.min_crop_scale or None,
                crop_scale(0.0, class_counts),
                f"{images / max(len(class_counts), 1):,.0f} training images per class "
                f"(fewer: stronger crops)")
    weighting = class_weighting(loss.class_weight, class_counts)
    reasons["class_weight"] = (weighting_reason(class_counts) if loss.class_weight == "auto"
                               else "set in the config")
    return Recipe(epochs, warmup, learning_rate, fraction, crop, weighting, reasons)


def crop_scale(min_crop_scale: float, class_counts: list[int]) -> float:
    """augment.min_crop_scale resolved: a set value as it is; 0 (auto) from the mean training
    images per class (CROP_BY_IMAGES_PER_CLASS, else LARGE_DATA_CROP)."""
    if min_crop_scale:
        return min_crop_scale
    per_class = sum(class_counts) / max(len(class_counts), 1)
    return next((scale for limit, scale in CROP_BY_IMAGES_PER_CLASS if per_class < limit),
                LARGE_DATA_CROP)


def applied(config, recipe: Recipe):
    """A copy of `config` (a PipelineConfig) with the recipe's values in place of its "auto"
    settings: what the fine-tune step and its input pipeline run with."""
    replace = dataclasses.replace
    return replace(
        config,
        finetune=replace(config.finetune, epochs=recipe.epochs,
                         warmup_epochs=recipe.warmup_epochs, learning_rate=recipe.learning_rate,
                         unfreeze_fraction=recipe.unfreeze_fraction),
        augment=replace(config.augment, min_crop_scale=recipe.min_crop_scale),
        loss=replace(config.loss, class_weight=recipe.class_weight))


def class_weighting(mode: str, class_counts: list[int]) -> str:
    """loss.class_weight resolved: "none", "sqrt" or "balanced" as they are; "auto" is "sqrt"
    when the largest class has IMBALANCE_RATIO times the smallest's training images or more,
    else "none". Both training stages use it, so head and fine-tuning weigh classes alike."""
    if mode != "auto":
        return mode
    return "sqrt" if _imbalance(class_counts) >= IMBALANCE_RATIO else "none"


def weighting_reason(class_counts: list[int]) -> str:
    return (f"largest class {_imbalance(class_counts):.1f}x the smallest (square-root balanced "
            f"from {IMBALANCE_RATIO:g}x)")


def _imbalance(class_counts: list[int]) -> float:
    return max(class_counts) / max(min(class_counts), 1)
