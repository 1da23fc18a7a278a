"""Typed run configuration: dataclasses with defaults, presets, YAML/dict loading and validation.

A `PipelineConfig` travels through the pipeline as a plain dict (a KFP struct parameter), so every
step rebuilds it with `PipelineConfig.from_dict` and sees the same validated values. `validate()`
checks everything that can be checked without touching data or TensorFlow, so a bad value fails
before any expensive work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from components.core import acceleration, backbones, export, onnx_precision


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclass
class DataConfig:
    """How ingest splits a source into train/val/test.

    val_fraction, test_fraction: share of each class carved out for val / test when the source
        does not provide that split itself; each in [0, 0.5), default 0.15.
    seed: decides which files go to which split (same seed and files -> same split).
    shard_size: images per TFRecord shard, >= 1 (default 1000).
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    shard_size: int = 1000


@dataclass
class ModelConfig:
    """The backbone and the new head.

    backbone: a name from `components.core.backbones.REGISTRY` (default "mobilenet_v2").
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


@dataclass
class AugmentConfig:
    """Training-image augmentation, one definition for head features and fine-tuning.

    views: augmented views of each training image whose frozen features are cached for head
        training, besides the image itself, in [0, 32] (default 0; each costs one backbone pass
        over the training set. Measured in benchmarks/RESULTS.md: 8 views took 2-4x the head
        stage; final test accuracy one image of 153 better on ants/bees at 160 px, the same at
        384 px, 2.4 points lower on digits; fine-tuning augments either way).
    min_crop_scale: a view is a random square crop covering this share of each side or more,
        resized back, in (0, 1] (default 0.75; 1 disables cropping).
    flip: mirror half of the views left-right (default True; turn off where mirroring changes
        the class, e.g. digits or text).
    """

    views: int = 0
    min_crop_scale: float = 0.75
    flip: bool = True


@dataclass
class LossConfig:
    """The loss of both training stages.

    label_smoothing: share of each target's probability spread over all classes, in [0, 0.5)
        (default 0: plain cross-entropy).
    class_weight: "none" or "balanced" (each class weighted by N / (classes x its training count),
        for imbalanced data).
    """

    label_smoothing: float = 0.0
    class_weight: str = "none"


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


@dataclass
class FinetuneConfig:
    """Fine-tuning the top of the backbone together with the head.

    epochs: maximum epochs, >= 0; 0 skips fine-tuning and ships the head-only model (default 10).
    learning_rate: Adam learning rate, > 0; should be 10-100x below the head's (default 1e-5).
    scratch_learning_rate: the learning rate instead, when the backbone has random weights and
        the whole network trains from scratch, > 0 (default 1e-3).
    warmup_epochs: epochs of linear warm-up from 0 to learning_rate, after which it decays to 0
        along a cosine over the remaining epochs, in [0, epochs) (default 1).
    Which layers train (BatchNorm layers always stay frozen), first match wins:
    unfreeze_from: name of the lowest backbone layer to train; it and every layer above it train.
    unfreeze_layers: that many layers from the top (default 0: not used).
    unfreeze_fraction: that share of the backbone's layers from the top, in [0, 1]; 0 (default)
        means the backbone's own default (`BackboneSpec.unfreeze_fraction`).
    batch_size: global batch size across all workers, >= 1 (default 32).
    patience: epochs without val-loss improvement before stopping, >= 1 (default 3).
    precision: what the backbone computes in while fine-tuning (see
        `components.core.acceleration`): "auto" (default: "mixed_bfloat16" where every GPU has
        compute capability 8.0 or more, else "float32"), "float32" or "mixed_bfloat16"
        (bfloat16 maths, float32 variables, head and loss). The shipped model is float32.
    xla: compile the forward and backward pass with XLA: "auto" (default: where there is a
        GPU), "always" or "never".
    """

    epochs: int = 10
    learning_rate: float = 1e-5
    scratch_learning_rate: float = 1e-3
    warmup_epochs: int = 1
    unfreeze_from: str = ""
    unfreeze_layers: int = 0
    unfreeze_fraction: float = 0.0
    batch_size: int = 32
    patience: int = 3
    precision: str = "auto"
    xla: str = "auto"


@dataclass
class EvaluateConfig:
    """Blessing rules (TFX Evaluator style) and what the report shows.

    min_accuracy: test accuracy in [0, 1] a model needs to be blessed (exported). Default 0.5.
    min_class_recall: lowest recall in [0, 1] any class may have (default 0: no rule).
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
    onnx_opset: int = 17
    onnx_variants: list[str] = field(default_factory=lambda: ["fp16", "int8"])
    tensorrt_precision: str = "fp16"


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

    def validate(self) -> "PipelineConfig":
        """Raises ConfigError naming the first invalid field and its fix; returns self."""
        for message in problems(self):
            raise ConfigError(message)
        return self

    def with_overrides(self, overrides: dict) -> "PipelineConfig":
        """Returns a copy with nested `overrides` (same shape as to_dict()) applied."""
        return PipelineConfig.from_dict(_deep_merge(self.to_dict(), overrides))


PRESETS = {
    "default": {},
    # The offline demo: scikit-learn's 8x8 handwritten digits, small and fast on 2 cores.
    "demo": {
        "model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32,
                  "allow_random_fallback": True},
        "augment": {"views": 0, "flip": False, "min_crop_scale": 0.85},
        "finetune": {"epochs": 30, "patience": 8, "learning_rate": 1e-4, "batch_size": 64,
                     "scratch_learning_rate": 3e-3},
        "export": {"calibration_samples": 100},
    },
}


def preset(name: str) -> PipelineConfig:
    """Returns the named preset ("default" or "demo")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}")
    return PipelineConfig.from_dict(PRESETS[name])


def read_yaml(path: str, what: str):
    """The YAML document in file `path` ({} when empty); ConfigError naming `what` (e.g.
    "config file") and the fix when it is missing or not YAML."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; pass the path of a YAML file")
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as error:
        raise ConfigError(f"{what} {path} cannot be read as text ({type(error).__name__}); "
                          f"pass the path of a YAML file")
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(error).split())}")


def load_yaml(path: str, base: Optional[PipelineConfig] = None) -> PipelineConfig:
    """Reads a YAML file of overrides (same nesting as to_dict()) on top of `base` (defaults)."""
    overrides = read_yaml(path, "config file")
    if not isinstance(overrides, dict):
        raise ConfigError(f"config file {path} must hold a mapping such as "
                          f"'finetune: {{epochs: 5}}'")
    return (base or PipelineConfig()).with_overrides(overrides)


def problems(config: PipelineConfig) -> list[str]:
    """All invalid values of `config`, each as a message naming the field and the fix."""
    found = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    data, model, head, tune = config.data, config.model, config.head, config.finetune
    for name in ("val_fraction", "test_fraction"):
        value = getattr(data, name)
        check(0 <= value < 0.5, f"data.{name}={value} is out of range; use a value in [0, 0.5)")
    check(data.shard_size >= 1, f"data.shard_size={data.shard_size}; use at least 1")

    spec = backbones.REGISTRY.get(model.backbone)
    if spec is None:
        found.append(f"unknown backbone {model.backbone!r}; use one of: "
                     f"{', '.join(sorted(backbones.REGISTRY))}")
    else:
        found.extend(backbones.problems(spec, model.image_size, model.alpha, model.weights))
    check(0 <= model.dropout < 1, f"model.dropout={model.dropout}; use a value in [0, 1)")
    augment = config.augment
    check(augment.flip or not model.mirror_average,
          "model.mirror_average averages each image with its mirror image, but augment.flip is "
          "off (mirroring changes the class); turn one of them off")
    check(0 <= augment.views <= 32, f"augment.views={augment.views}; use a count from 0 to 32")
    check(0 < augment.min_crop_scale <= 1,
          f"augment.min_crop_scale={augment.min_crop_scale}; use a value in (0, 1]")

    for section, stage in (("head", head), ("finetune", tune)):
        check(stage.learning_rate > 0,
              f"{section}.learning_rate={stage.learning_rate}; use a positive value")
        check(stage.patience >= 1, f"{section}.patience={stage.patience}; use at least 1")
    check(tune.batch_size >= 1, f"finetune.batch_size={tune.batch_size}; use at least 1")
    check(tune.scratch_learning_rate > 0,
          f"finetune.scratch_learning_rate={tune.scratch_learning_rate}; use a positive value")
    check(head.max_steps >= 10, f"head.max_steps={head.max_steps}; use at least 10")
    check(len(head.l2_candidates) >= 1 and min(head.l2_candidates) >= 0,
          f"head.l2_candidates={head.l2_candidates}; give one or more values >= 0")
    check(tune.epochs >= 0, f"finetune.epochs={tune.epochs}; use 0 (no fine-tuning) or more")
    check(tune.unfreeze_layers >= 0,
          f"finetune.unfreeze_layers={tune.unfreeze_layers}; use 0 (backbone default) or more")
    check(0 <= tune.unfreeze_fraction <= 1,
          f"finetune.unfreeze_fraction={tune.unfreeze_fraction}; use a share in [0, 1]")
    check(0 <= tune.warmup_epochs and (tune.warmup_epochs < tune.epochs or tune.epochs == 0),
          f"finetune.warmup_epochs={tune.warmup_epochs}; use fewer than finetune.epochs="
          f"{tune.epochs}")
    for name, allowed in (("precision", acceleration.PRECISIONS),
                          ("xla", acceleration.XLA_SETTINGS)):
        check(getattr(tune, name) in allowed,
              f"finetune.{name}={getattr(tune, name)!r}; use one of {', '.join(allowed)}")
    check(0 <= config.loss.label_smoothing < 0.5,
          f"loss.label_smoothing={config.loss.label_smoothing}; use a value in [0, 0.5)")
    check(config.loss.class_weight in ("none", "balanced"),
          f"loss.class_weight={config.loss.class_weight!r}; use none or balanced")
    check(tune.learning_rate < head.learning_rate,
          f"finetune.learning_rate={tune.learning_rate} is not below head.learning_rate="
          f"{head.learning_rate}; fine-tune 10-100x lower than the head or it wrecks the "
          f"pretrained features")

    judge = config.evaluate
    for name in ("min_accuracy", "min_class_recall"):
        check(0 <= getattr(judge, name) <= 1,
              f"evaluate.{name}={getattr(judge, name)}; use a value in [0, 1]")
    for name in ("baseline_margin", "max_recall_drop"):
        check(getattr(judge, name) >= 0,
              f"evaluate.{name}={getattr(judge, name)}; use percentage points >= 0")
    check(0 <= judge.wrong_examples <= 100,
          f"evaluate.wrong_examples={judge.wrong_examples}; use 0 to 100")
    check(100 <= judge.bootstrap_samples <= 100000,
          f"evaluate.bootstrap_samples={judge.bootstrap_samples}; use 100 to 100000")
    check(config.export.calibration_samples >= 1,
          f"export.calibration_samples={config.export.calibration_samples}; use at least 1")
    shipping = config.export
    unknown = sorted(set(shipping.tflite_variants) - set(export.QUANTIZED_VARIANTS))
    check(not unknown, f"export.tflite_variants has unknown {unknown}; use any of "
                       f"{', '.join(export.QUANTIZED_VARIANTS)}")
    check(shipping.int8_input in ("uint8", "int8"),
          f"export.int8_input={shipping.int8_input!r}; use uint8 or int8")
    check(shipping.max_accuracy_drop >= 0,
          f"export.max_accuracy_drop={shipping.max_accuracy_drop}; use points >= 0")
    check(13 <= shipping.onnx_opset <= 18,
          f"export.onnx_opset={shipping.onnx_opset}; use 13 to 18 (what tf2onnx supports)")
    unknown = sorted(set(shipping.onnx_variants) - set(onnx_precision.VARIANTS))
    check(not unknown, f"export.onnx_variants has unknown {unknown}; use any of "
                       f"{', '.join(onnx_precision.VARIANTS)}")
    check(shipping.tensorrt_precision in ("fp32", "fp16", "int8"),
          f"export.tensorrt_precision={shipping.tensorrt_precision!r}; use fp32, fp16 or int8")
    check(shipping.tensorrt_precision in ("fp32", *shipping.onnx_variants),
          f"export.tensorrt_precision={shipping.tensorrt_precision} builds the engine from the "
          f"{shipping.tensorrt_precision} ONNX model; add {shipping.tensorrt_precision} to "
          f"export.onnx_variants")
    return found


def from_mapping(cls, values: dict, prefix: str = ""):
    """Builds dataclass `cls` from a mapping: unknown keys are ConfigErrors naming the known ones,
    values are coerced to the fields' types (bool, int, float, str, list[T], dict[str, str],
    nested dataclasses); `prefix` names where the mapping sits in error messages."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; known keys here: "
                          f"{', '.join(sorted(names))}")
    return cls(**{name: _coerce(value, hints[name], f"{prefix}{name}")
                  for name, value in values.items()})


def _coerce(value: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} must be true or false")
    if kind is int:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value):
            return int(value)
        raise ConfigError(f"{name}={value!r} must be a whole number")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}={value!r} must be a number")
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, f"{name}.")
    if typing.get_origin(kind) is list:
        if isinstance(value, (list, tuple)):
            item = typing.get_args(kind)[0]
            return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"{name}={value!r} must be a list")
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict):
            return {str(key): _coerce(item, str, f"{name}.{key}") for key, item in value.items()}
        raise ConfigError(f"{name}={value!r} must be a mapping")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}={value!r} must be a string")
    return value


def _deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
