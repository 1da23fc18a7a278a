"""Validation of a run config: every invalid value, each named with its fix, found before
any data or TensorFlow is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.core.config.errors import ConfigError
from components.core.export import measure, onnx_precision, tflite
from components.core.train import acceleration, backbones

SELECTIONS = ("last", "best_val_loss")  # finetune.selection

if TYPE_CHECKING:
    from components.core.config.schema import FinetuneConfig, PipelineConfig


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
    check(0 <= augment.min_crop_scale <= 1,
          f"augment.min_crop_scale={augment.min_crop_scale}; use a value in (0, 1], or 0 to "
          f"choose from the data")

    check(head.learning_rate > 0, f"head.learning_rate={head.learning_rate}; use a positive value")
    check(tune.learning_rate >= 0, f"finetune.learning_rate={tune.learning_rate}; use a positive "
                                   f"value, or 0 to choose from the backbone and batch size")
    for section, stage in (("head", head), ("finetune", tune)):
        check(stage.patience >= 1, f"{section}.patience={stage.patience}; use at least 1")
    check(tune.weight_decay >= 0, f"finetune.weight_decay={tune.weight_decay}; use a value >= 0")
    search = tune.search
    check(all(value > 0 for value in search.learning_rates),
          f"finetune.search.learning_rates={search.learning_rates}; use positive values")
    check(all(0 < value <= 1 for value in search.unfreeze_fractions),
          f"finetune.search.unfreeze_fractions={search.unfreeze_fractions}; use shares in (0, 1]")
    check(all(value >= 1 for value in search.epochs),
          f"finetune.search.epochs={search.epochs}; use counts of at least 1")
    check(not search.epochs or tune.warmup_epochs < min(search.epochs),
          f"finetune.warmup_epochs={tune.warmup_epochs} is not below every count in "
          f"finetune.search.epochs={search.epochs}; leave warmup_epochs at -1 (auto) or lower it")
    check(model.weights != "none" or not (search.learning_rates or search.unfreeze_fractions),
          "finetune.search varies learning_rates or unfreeze_fractions, but with weights: none "
          "the whole network trains from scratch at finetune.scratch_learning_rate; search "
          "epochs only, or use pretrained weights")
    check(tune.selection in SELECTIONS,
          f"finetune.selection={tune.selection!r}; use one of {', '.join(SELECTIONS)}")
    check(tune.batch_size >= 1, f"finetune.batch_size={tune.batch_size}; use at least 1")
    check(tune.scratch_learning_rate > 0,
          f"finetune.scratch_learning_rate={tune.scratch_learning_rate}; use a positive value")
    check(head.max_steps >= 10, f"head.max_steps={head.max_steps}; use at least 10")
    check(len(head.l2_candidates) >= 1 and min(head.l2_candidates) >= 0,
          f"head.l2_candidates={head.l2_candidates}; give one or more values >= 0")
    check(tune.epochs >= -1, f"finetune.epochs={tune.epochs}; use 0 (no fine-tuning), more, "
                             f"or -1 to choose from the data")
    check(tune.unfreeze_layers >= 0,
          f"finetune.unfreeze_layers={tune.unfreeze_layers}; use 0 (backbone default) or more")
    check(0 <= tune.unfreeze_fraction <= 1,
          f"finetune.unfreeze_fraction={tune.unfreeze_fraction}; use a share in [0, 1]")
    check(tune.warmup_epochs >= -1 and (tune.warmup_epochs < tune.epochs or tune.epochs <= 0),
          f"finetune.warmup_epochs={tune.warmup_epochs}; use fewer than finetune.epochs="
          f"{tune.epochs}, or -1 to choose from the epochs")
    for name, allowed in (("precision", acceleration.PRECISIONS),
                          ("xla", acceleration.XLA_SETTINGS)):
        check(getattr(tune, name) in allowed,
              f"finetune.{name}={getattr(tune, name)!r}; use one of {', '.join(allowed)}")
    check(0 <= config.loss.label_smoothing < 0.5,
          f"loss.label_smoothing={config.loss.label_smoothing}; use a value in [0, 0.5)")
    check(config.loss.class_weight in ("none", "balanced", "sqrt", "auto"),
          f"loss.class_weight={config.loss.class_weight!r}; use none, balanced, sqrt or auto")
    check(not tune.learning_rate or tune.learning_rate < head.learning_rate,
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
    unknown = sorted(set(shipping.tflite_variants) - set(tflite.QUANTIZED_VARIANTS))
    check(not unknown, f"export.tflite_variants has unknown {unknown}; use any of "
                       f"{', '.join(tflite.QUANTIZED_VARIANTS)}")
    check(shipping.int8_input in ("uint8", "int8"),
          f"export.int8_input={shipping.int8_input!r}; use uint8 or int8")
    check(shipping.max_accuracy_drop >= 0,
          f"export.max_accuracy_drop={shipping.max_accuracy_drop}; use points >= 0")
    check(0 <= shipping.min_agreement <= 1,
          f"export.min_agreement={shipping.min_agreement}; use a share in [0, 1]")
    check(shipping.recommend in measure.RECOMMEND_POLICIES,
          f"export.recommend={shipping.recommend!r}; use one of "
          f"{', '.join(measure.RECOMMEND_POLICIES)}")
    check(shipping.max_slowdown >= 1,
          f"export.max_slowdown={shipping.max_slowdown}; use a factor >= 1 (1: no slower "
          f"than the float model)")
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


def check_batch_fits(tune: FinetuneConfig, images: int, where: str) -> None:
    """ConfigError when fine-tuning's global batch (finetune.batch_size images) is larger than
    the `images` there are in `where` (e.g. "the training split"); checked before training."""
    if tune.epochs and tune.batch_size > images:
        raise ConfigError(
            f"finetune.batch_size={tune.batch_size} is larger than the {images} images in "
            f"{where}; use a batch size of at most {images}, or add images")
