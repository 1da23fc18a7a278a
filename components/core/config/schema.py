"""Typed run configuration: dataclasses with defaults, each section with its own rules
(`problems`), the rules between sections and the environment's on `PipelineConfig`, and presets
(the loading from YAML and dicts: coerce.py).

The CLI checks the whole config once (`PipelineConfig.preflight`: every section, the rules between
sections, the weights file) before any step starts. Each step receives only the sections it uses,
as plain dicts (KFP struct parameters), rebuilds them with `PipelineConfig.from_dict` and checks
those sections alone (`validate(sections)`), so defaults standing in for sections it did not
receive never fail it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from components.core.config import backbones
from components.core.config.coerce import deep_merge, from_mapping, read_yaml
from components.core.errors import ConfigError

# The values each choice field takes (the modules that act on them import them from here).
SELECTIONS = ("last", "best_val_loss")  # finetune.selection
FINETUNE_PRECISIONS = ("auto", "float32", "mixed_bfloat16")  # finetune.precision
XLA_SETTINGS = ("auto", "always", "never")  # finetune.xla
CLASS_WEIGHTS = ("none", "balanced", "sqrt", "auto")  # loss.class_weight
TFLITE_QUANTIZED_VARIANTS = ("fp16", "dynamic_int8", "int8", "int16x8")  # export.tflite_variants
ONNX_VARIANTS = ("fp16", "int8")  # export.onnx_variants
RECOMMEND_POLICIES = ("balanced", "smallest", "fastest")  # export.recommend


@dataclass
class DataConfig:
    """How ingest splits a source into train/val/test.

    val_fraction, test_fraction: share of each class carved out for val / test when the source
        does not provide that split itself; each in [0, 0.5), default 0.15.
    seed: the run's one random seed: which files go to which split and in what order the
        training split is stored (same seed and files -> same splits), and also the
        BatchNorm statistics sample, cached views' and fine-tuning's augmentation, random
        initial weights, fine-tuning's shuffle, the bootstrap intervals and the calibration
        sample (default 42).
    shard_size: images per TFRecord shard, >= 1 (default 1000).
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    shard_size: int = 1000

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        found = [f"data.{name}={getattr(self, name)} is out of range; use a value in [0, 0.5)"
                 for name in ("val_fraction", "test_fraction")
                 if not 0 <= getattr(self, name) < 0.5]
        if self.shard_size < 1:
            found.append(f"data.shard_size={self.shard_size}; use at least 1")
        return found


@dataclass
class ModelConfig:
    """The backbone and the new head.

    backbone: a name from `components.core.config.backbones.REGISTRY` (default "mobilenet_v2").
    alpha: width multiplier, MobileNet family only (default 1.0).
    image_size: square input side in pixels the backbone sees; 0 means the backbone's default.
    weights: "imagenet" (Keras download and cache), "none" (random init), a local .h5/.weights.h5
        path or a gs:// URI of such a file.
    allow_random_fallback: if ImageNet weights cannot be downloaded, continue from random
        initialisation (loudly, and recorded in the outputs) instead of failing. Default False.
    dropout: dropout rate before the classification layer, in [0, 1) (default 0.2).
    mirror_average: the classifier sees the mean of the backbone's features of the image and
        of its left-right mirror image, in training, evaluation and every exported model
        (default False). Costs a second backbone pass per image (twice the latency); measured
        in benchmarks/RESULTS.md on ants/bees. Needs augment.flip (mirroring keeps the class).
    """

    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    image_size: int = 0
    weights: str = "imagenet"
    allow_random_fallback: bool = False
    dropout: float = 0.2
    mirror_average: bool = False

    def problems(self) -> list[str]:
        """This section's invalid values (the weights file's existence is the environment's:
        see `weights_problems`)."""
        spec = backbones.REGISTRY.get(self.backbone)
        if spec is None:
            found = [f"unknown backbone {self.backbone!r}; use one of: "
                     f"{', '.join(sorted(backbones.REGISTRY))}"]
        else:
            found = backbones.problems(spec, self.image_size, self.alpha, self.weights)
        if not 0 <= self.dropout < 1:
            found.append(f"model.dropout={self.dropout}; use a value in [0, 1)")
        return found

    def weights_problems(self) -> list[str]:
        """The weights file, when `weights` names a local one, missing here: checked where the
        file is read (the CLI before a run, the preprocess step), not by every step."""
        return backbones.weights_file_problems(self.weights)


@dataclass
class AugmentConfig:
    """Training-image augmentation, one definition for head features and fine-tuning.

    views: augmented views of each training image whose frozen features are cached for head
        training, besides the image itself, in [0, 32] (default 0; each costs one backbone pass
        over the training set. Measured in benchmarks/RESULTS.md: 8 views took 2-4x the head
        stage; final test accuracy one image of 153 better on ants/bees at 160 px, the same at
        384 px, 2.4 points lower on digits; fine-tuning augments either way).
    min_crop_scale: a view is a random square crop covering this share of each side or more,
        resized back, in [0, 1]; 1 disables cropping; 0 (default) chooses from the training
        images per class (components.core.train.recipe: 0.6 below 500, 0.7 below 5,000, else
        0.8).
    flip: mirror half of the views left-right (default True; turn off where mirroring changes
        the class, e.g. digits or text).
    """

    views: int = 0
    min_crop_scale: float = 0.0
    flip: bool = True

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        found = []
        if not 0 <= self.views <= 32:
            found.append(f"augment.views={self.views}; use a count from 0 to 32")
        if not 0 <= self.min_crop_scale <= 1:
            found.append(f"augment.min_crop_scale={self.min_crop_scale}; use a value in (0, 1], "
                         f"or 0 to choose from the data")
        return found


@dataclass
class LossConfig:
    """The loss of both training stages.

    label_smoothing: share of each target's probability spread over all classes, in [0, 0.5)
        (default 0.1).
    class_weight: "none", "balanced" (each class weighted by N / (classes x its training
        count)), "sqrt" (the square root of that, rescaled to average 1) or "auto" (default:
        sqrt when the largest class has 10x the smallest's training images or more, else none;
        see components.core.train.recipe for the measurement).
    """

    label_smoothing: float = 0.1
    class_weight: str = "auto"

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        found = []
        if not 0 <= self.label_smoothing < 0.5:
            found.append(f"loss.label_smoothing={self.label_smoothing}; use a value in [0, 0.5)")
        if self.class_weight not in CLASS_WEIGHTS:
            found.append(f"loss.class_weight={self.class_weight!r}; use none, balanced, sqrt or "
                         f"auto")
        return found


@dataclass
class HeadConfig:
    """Training of the new head on cached frozen-backbone features.

    max_steps: most full-batch training steps per L2 candidate, >= 10 (default 2000; early
        stopping on val cross-entropy usually ends far sooner).
    learning_rate: Adam learning rate, > 0 (default 1e-2).
    patience: val checks (one every 10 steps) without a lower val cross-entropy before
        stopping, >= 1 (default 20).
    l2_candidates: L2 penalties on the classification weights, each >= 0; one head is trained
        per value and the one with the lowest val cross-entropy is kept (default 1e-4 to 1e-1).
    """

    max_steps: int = 2000
    learning_rate: float = 1e-2
    patience: int = 20
    l2_candidates: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        found = []
        if not self.learning_rate > 0:
            found.append(f"head.learning_rate={self.learning_rate}; use a positive value")
        if self.patience < 1:
            found.append(f"head.patience={self.patience}; use at least 1")
        if self.max_steps < 10:
            found.append(f"head.max_steps={self.max_steps}; use at least 10")
        if not (self.l2_candidates and min(self.l2_candidates) >= 0):
            found.append(f"head.l2_candidates={self.l2_candidates}; give one or more values >= 0")
        return found


@dataclass
class SearchConfig:
    """Fine-tuning trials run side by side as parallel pipeline tasks (a KFP ParallelFor: each
    trial gets the fine-tune step's GPUs on a cluster; kfp.local runs them one after another),
    and the trial with the lowest val loss is shipped. Every combination of the non-empty
    lists is one trial; an empty list keeps the recipe's value. All empty (default): no search,
    one fine-tune task. The trials are part of the compiled pipeline (`tlpipe run`, `submit`
    and `schedule` compile them from the config).

    learning_rates: peak learning rates, each > 0.
    unfreeze_fractions: shares of the backbone's layers that train, each in (0, 1].
    epochs: epoch counts, each >= 1.
    """

    learning_rates: list[float] = field(default_factory=list)
    unfreeze_fractions: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        found = []
        if not all(value > 0 for value in self.learning_rates):
            found.append(f"finetune.search.learning_rates={self.learning_rates}; use positive "
                         f"values")
        if not all(0 < value <= 1 for value in self.unfreeze_fractions):
            found.append(f"finetune.search.unfreeze_fractions={self.unfreeze_fractions}; use "
                         f"shares in (0, 1]")
        if not all(value >= 1 for value in self.epochs):
            found.append(f"finetune.search.epochs={self.epochs}; use counts of at least 1")
        return found


@dataclass
class FinetuneConfig:
    """Fine-tuning the backbone together with the head (AdamW, gradients clipped, BatchNorm in
    inference mode). Settings left on "auto" are chosen per run from the training images per
    class, the number of classes and the backbone's size (components.core.train.recipe; the
    values used and why are in finetune.json).

    epochs: epochs, >= 0; 0 skips fine-tuning and ships the head-only model; -1 (default):
        about 50,000 images seen, within 4-40 epochs.
    learning_rate: peak AdamW learning rate, > 0; 0 (default): 3e-4 at batch 32 for backbones of
        up to 4M parameters, scaled by sqrt(batch / 32) and down by sqrt(4M / parameters).
    scratch_learning_rate: the learning rate instead, when the backbone has random weights and
        the whole network trains from scratch, > 0 (default 1e-3).
    weight_decay: AdamW decoupled weight decay (Keras semantics: each step shrinks a weight by
        weight_decay x learning_rate of itself), >= 0; biases are not decayed (default 0.01).
    warmup_epochs: epochs of linear warm-up from 0 to learning_rate, after which it decays to 0
        along a cosine over the remaining epochs, in [0, epochs); -1 (default): 7% of the epochs,
        at least 1.
    Which layers train (BatchNorm layers always stay frozen), first match wins:
    unfreeze_from: name of the lowest backbone layer to train; it and every layer above it train.
    unfreeze_layers: that many layers from the top (default 0: not used).
    unfreeze_fraction: that share of the backbone's layers from the top, in [0, 1]; 0 (default):
        one training image per 2,000 backbone parameters, at least the backbone's own default
        share (`BackboneSpec.unfreeze_fraction`), at most all of it.
    batch_size: global batch size across all workers, >= 1 (default 32).
    selection: which weights fine-tuning ends with: "last" (default: the fixed schedule runs to
        its end, nothing is picked on a small val set) or "best_val_loss" (the epoch with the
        lowest val loss, stopping after `patience` epochs without a lower one).
    patience: epochs without val-loss improvement before stopping, >= 1 (default 3; only with
        selection "best_val_loss").
    precision: what the backbone computes in while fine-tuning (see
        `components.core.train.acceleration`): "auto" (default: "mixed_bfloat16" where every GPU has
        compute capability 8.0 or more, else "float32"), "float32" or "mixed_bfloat16"
        (bfloat16 maths, float32 variables, head and loss). The shipped model is float32.
    xla: compile the forward and backward pass with XLA: "auto" (default: where there is a
        GPU), "always" or "never".
    search: trials over learning rate, depth and epochs, the best on val shipped (see
        `SearchConfig`; default: none).
    Whatever the settings, the fine-tuned model ships only if the head-only model is not
    clearly better on val (a paired test over the val images: see `finetune.finetuned_is_better`).
    """

    epochs: int = -1
    learning_rate: float = 0.0
    scratch_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: int = -1
    unfreeze_from: str = ""
    unfreeze_layers: int = 0
    unfreeze_fraction: float = 0.0
    batch_size: int = 32
    selection: str = "last"
    patience: int = 3
    precision: str = "auto"
    xla: str = "auto"
    search: SearchConfig = field(default_factory=SearchConfig)

    def problems(self) -> list[str]:
        """This section's invalid values (its search's included), each naming the field and
        the fix."""
        epochs, warmup = self.epochs, self.warmup_epochs
        return self.search.problems() + _broken([
            (self.learning_rate >= 0,
             f"finetune.learning_rate={self.learning_rate}; use a positive value, or 0 to "
             f"choose from the backbone and batch size"),
            (self.patience >= 1, f"finetune.patience={self.patience}; use at least 1"),
            (self.weight_decay >= 0,
             f"finetune.weight_decay={self.weight_decay}; use a value >= 0"),
            (not self.search.epochs or warmup < min(self.search.epochs),
             f"finetune.warmup_epochs={warmup} is not below every count in "
             f"finetune.search.epochs={self.search.epochs}; leave warmup_epochs at -1 (auto) "
             f"or lower it"),
            (self.selection in SELECTIONS,
             f"finetune.selection={self.selection!r}; use one of {', '.join(SELECTIONS)}"),
            (self.batch_size >= 1, f"finetune.batch_size={self.batch_size}; use at least 1"),
            (self.scratch_learning_rate > 0,
             f"finetune.scratch_learning_rate={self.scratch_learning_rate}; use a positive "
             f"value"),
            (epochs >= -1, f"finetune.epochs={epochs}; use 0 (no fine-tuning), more, or -1 to "
                           f"choose from the data"),
            (self.unfreeze_layers >= 0, f"finetune.unfreeze_layers={self.unfreeze_layers}; "
                                        f"use 0 (backbone default) or more"),
            (0 <= self.unfreeze_fraction <= 1,
             f"finetune.unfreeze_fraction={self.unfreeze_fraction}; use a share in [0, 1]"),
            (warmup >= -1 and (warmup < epochs or epochs <= 0),
             f"finetune.warmup_epochs={warmup}; use fewer than finetune.epochs={epochs}, or -1 "
             f"to choose from the epochs"),
            (self.precision in FINETUNE_PRECISIONS,
             f"finetune.precision={self.precision!r}; use one of "
             f"{', '.join(FINETUNE_PRECISIONS)}"),
            (self.xla in XLA_SETTINGS,
             f"finetune.xla={self.xla!r}; use one of {', '.join(XLA_SETTINGS)}"),
        ])

    def check_batch_fits(self, images: int, where: str) -> None:
        """ConfigError when the global batch (batch_size images) is larger than the `images`
        there are in `where` (e.g. "the training split"); checked where the data is known,
        before training."""
        if self.epochs and self.batch_size > images:
            raise ConfigError(
                f"finetune.batch_size={self.batch_size} is larger than the {images} images in "
                f"{where}; use a batch size of at most {images}, or add images")


@dataclass
class EvaluateConfig:
    """Blessing rules (TFX Evaluator style) and what the report shows.

    Units: shares in [0, 1] for the accuracy and recall floors, percentage points (0-100) for
    the margins against the baseline, counts for the rest.

    min_accuracy: test accuracy, a share in [0, 1], a model needs to be blessed (exported).
        Default 0.5.
    min_class_recall: lowest recall, a share in [0, 1], any class may have (default 0: no
        rule).
    baseline_model: the model in production to compare with (a .keras file of an earlier run,
        local or gs://, with labels.txt beside it); "" for none (default).
    baseline_margin: percentage points the candidate's accuracy may trail the baseline's, >= 0
        (default 0: not worse).
    max_recall_drop: percentage points any class's recall may fall below the baseline's, >= 0
        (default 5).
    wrong_examples: most confidently wrong test images shown in the report, 0-100 (default 12).
    bootstrap_samples: resamples for the model card's confidence intervals, 100-100000
        (default 1000)."""

    min_accuracy: float = 0.5
    min_class_recall: float = 0.0
    baseline_model: str = ""
    baseline_margin: float = 0.0
    max_recall_drop: float = 5.0
    wrong_examples: int = 12
    bootstrap_samples: int = 1000

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        found = [f"evaluate.{name}={getattr(self, name)}; use a value in [0, 1]"
                 for name in ("min_accuracy", "min_class_recall")
                 if not 0 <= getattr(self, name) <= 1]
        found += [f"evaluate.{name}={getattr(self, name)}; use percentage points >= 0"
                  for name in ("baseline_margin", "max_recall_drop") if getattr(self, name) < 0]
        if not 0 <= self.wrong_examples <= 100:
            found.append(f"evaluate.wrong_examples={self.wrong_examples}; use 0 to 100")
        if not 100 <= self.bootstrap_samples <= 100000:
            found.append(f"evaluate.bootstrap_samples={self.bootstrap_samples}; use 100 to "
                         f"100000")
        return found


@dataclass
class ExportConfig:
    """How the blessed model is shipped.

    tflite_variants: quantized TFLite variants to build, each evaluated on the test split; any of
        "fp16", "dynamic_int8", "int8" (full integer), "int16x8" (int16 activations, int8
        weights). A float32 TFLite model is always built as the reference and the fallback.
    int8_input: input of the full-integer "int8" model: "uint8" raw pixels like every other
        format (default), or "int8" pixels - 128 for accelerators that take only int8.
    calibration_samples: training images (class-stratified) used to calibrate full-integer
        INT8 / 16x8 TFLite and the Q/DQ INT8 ONNX (the TensorRT INT8 engine's source), >= 1
        (default 200).
    max_accuracy_drop: percentage points of test accuracy a variant may lose against the float
        model before it is rejected, >= 0 (default 1.0).
    min_agreement: share of test images, in [0, 1], on which a variant must predict the same
        class as the float Keras model, or it is rejected (default 0.95).
    recommend: which accepted variant of each family (TFLite, ONNX) is recommended:
        "balanced" (default) the smallest whose median batch-1 CPU latency is at most
        max_slowdown times the float model's; "smallest"; or "fastest".
    max_slowdown: that factor for "balanced", >= 1 (default 2.0).
    onnx_opset: ONNX opset of the exported model, 13-18 (default 17).
    onnx_variants: reduced-precision ONNX models to build beside the float one, each evaluated
        and gated like the TFLite variants: any of "fp16", "int8" (explicit Q/DQ, calibrated on
        the same images); default both.
    tensorrt_precision: "fp32", "fp16" (default) or "int8": the TensorRT engine is built from
        the float, fp16 or int8 ONNX model (the latter two must be in onnx_variants)."""

    tflite_variants: list[str] = field(
        default_factory=lambda: ["fp16", "dynamic_int8", "int8", "int16x8"])
    int8_input: str = "uint8"
    calibration_samples: int = 200
    max_accuracy_drop: float = 1.0
    min_agreement: float = 0.95
    recommend: str = "balanced"
    max_slowdown: float = 2.0
    onnx_opset: int = 17
    onnx_variants: list[str] = field(default_factory=lambda: ["fp16", "int8"])
    tensorrt_precision: str = "fp16"

    def problems(self) -> list[str]:
        """This section's invalid values, each as a message naming the field and the fix."""
        unknown_tflite = sorted(set(self.tflite_variants) - set(TFLITE_QUANTIZED_VARIANTS))
        unknown_onnx = sorted(set(self.onnx_variants) - set(ONNX_VARIANTS))
        precision = self.tensorrt_precision
        return _broken([
            (self.calibration_samples >= 1,
             f"export.calibration_samples={self.calibration_samples}; use at least 1"),
            (not unknown_tflite, f"export.tflite_variants has unknown {unknown_tflite}; use "
                                 f"any of {', '.join(TFLITE_QUANTIZED_VARIANTS)}"),
            (self.int8_input in ("uint8", "int8"),
             f"export.int8_input={self.int8_input!r}; use uint8 or int8"),
            (self.max_accuracy_drop >= 0,
             f"export.max_accuracy_drop={self.max_accuracy_drop}; use points >= 0"),
            (0 <= self.min_agreement <= 1,
             f"export.min_agreement={self.min_agreement}; use a share in [0, 1]"),
            (self.recommend in RECOMMEND_POLICIES,
             f"export.recommend={self.recommend!r}; use one of "
             f"{', '.join(RECOMMEND_POLICIES)}"),
            (self.max_slowdown >= 1,
             f"export.max_slowdown={self.max_slowdown}; use a factor >= 1 (1: no slower than "
             f"the float model)"),
            (13 <= self.onnx_opset <= 18,
             f"export.onnx_opset={self.onnx_opset}; use 13 to 18 (what tf2onnx supports)"),
            (not unknown_onnx, f"export.onnx_variants has unknown {unknown_onnx}; use any of "
                               f"{', '.join(ONNX_VARIANTS)}"),
            (precision in ("fp32", "fp16", "int8"),
             f"export.tensorrt_precision={precision!r}; use fp32, fp16 or int8"),
            (precision in ("fp32", *self.onnx_variants),
             f"export.tensorrt_precision={precision} builds the engine from the {precision} "
             f"ONNX model; add {precision} to export.onnx_variants"),
        ])


@dataclass
class PipelineConfig:
    """Everything a run needs besides the data source."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PipelineConfig":
        """Builds a config from nested dicts; unknown keys are errors, numbers are coerced to the
        field's type (KFP struct parameters turn every number into a float)."""
        return from_mapping(cls, values or {})

    def problems(self, sections=None) -> list[str]:
        """Invalid values of the named sections (default: all of SECTIONS), then the rules that
        tie two sections together, each applied only when all its sections are named: a step
        that received some sections judges those alone, not defaults standing in for the rest."""
        named = set(SECTIONS if sections is None else sections)
        found = [message for name in SECTIONS if name in named
                 for message in getattr(self, name).problems()]
        return found + [message for needs, message in self._cross_section_problems()
                        if needs <= named]

    def _cross_section_problems(self) -> list[tuple[set[str], str]]:
        """(the sections a rule reads, its message) for every rule between sections broken."""
        model, tune = self.model, self.finetune
        found = []
        if model.mirror_average and not self.augment.flip:
            found.append(({"model", "augment"},
                          "model.mirror_average averages each image with its mirror image, but "
                          "augment.flip is off (mirroring changes the class); turn one of them "
                          "off"))
        if model.weights == "none" and (tune.search.learning_rates
                                        or tune.search.unfreeze_fractions):
            found.append(({"model", "finetune"},
                          "finetune.search varies learning_rates or unfreeze_fractions, but with "
                          "weights: none the whole network trains from scratch at "
                          "finetune.scratch_learning_rate; search epochs only, or use "
                          "pretrained weights"))
        if tune.learning_rate and tune.learning_rate >= self.head.learning_rate:
            found.append(({"head", "finetune"},
                          f"finetune.learning_rate={tune.learning_rate} is not below "
                          f"head.learning_rate={self.head.learning_rate}; fine-tune 10-100x "
                          f"lower than the head or it wrecks the pretrained features"))
        return found

    def validate(self, sections=None) -> "PipelineConfig":
        """Raises ConfigError naming the first invalid value of the named sections (default:
        all) and its fix (see `problems`); returns self."""
        for message in self.problems(sections):
            raise ConfigError(message)
        return self

    def preflight(self) -> "PipelineConfig":
        """`validate` every section, then the environment this process sees (the weights
        file): what the CLI checks once before any step starts. Returns self."""
        for message in self.validate().model.weights_problems():
            raise ConfigError(message)
        return self

    def with_overrides(self, overrides: dict) -> "PipelineConfig":
        """Returns a copy with nested `overrides` (same shape as to_dict()) applied."""
        return PipelineConfig.from_dict(deep_merge(self.to_dict(), overrides))


SECTIONS = tuple(f.name for f in dataclasses.fields(PipelineConfig))


def _broken(rules) -> list[str]:
    """The messages of the (holds, message) rules that do not hold, in order."""
    return [message for holds, message in rules if not holds]

PRESETS = {
    "default": {},
    # The offline demo: scikit-learn's 8x8 handwritten digits, small and fast on 2 cores.
    "demo": {
        "model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32,
                  "allow_random_fallback": True},
        "augment": {"views": 0, "flip": False, "min_crop_scale": 0.85},
        # digits train from scratch offline (no ImageNet weights): the recipe of a pretrained
        # backbone does not apply; early stopping on val picks among 30 epochs
        "loss": {"label_smoothing": 0.0, "class_weight": "none"},
        "finetune": {"epochs": 30, "patience": 8, "learning_rate": 1e-4, "batch_size": 64,
                     "scratch_learning_rate": 3e-3, "warmup_epochs": 1, "weight_decay": 0.0,
                     "selection": "best_val_loss"},
        "export": {"calibration_samples": 100},
    },
}


def preset(name: str) -> PipelineConfig:
    """Returns the named preset ("default" or "demo")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}")
    return PipelineConfig.from_dict(PRESETS[name])


def load_yaml(path: str, base: Optional[PipelineConfig] = None) -> PipelineConfig:
    """Reads a YAML file of overrides (same nesting as to_dict()) on top of `base` (defaults)."""
    overrides = read_yaml(path, "config file")
    if not isinstance(overrides, dict):
        raise ConfigError(f"config file {path} must hold a mapping such as "
                          f"'finetune: {{epochs: 5}}'")
    return (base or PipelineConfig()).with_overrides(overrides)
