"""The raw-image-in classifier: RawImagePreprocessing -> backbone (inference-mode BN) -> head.

The backbone's weights are resolved here (ImageNet through Keras's own download and cache, a file
or gs:// URI, or random) and their provenance is recorded, so every report can say plainly what
the model started from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile

import keras

from components.core import backbones, storage
from components.core.config import ModelConfig
from components.core.preprocessing import RawImagePreprocessing

log = logging.getLogger("tlpipe.model")


class WeightsError(ValueError):
    """Backbone weights cannot be had or do not fit the backbone; the message names the fix."""


def load_backbone(config: ModelConfig) -> tuple[keras.Model, dict]:
    """Builds the configured backbone with its weights. Returns (backbone, provenance) where
    provenance is {"weights": "imagenet" | "file" | "random", "detail": str}."""
    spec = backbones.get(config.backbone)
    size = backbones.resolved_size(spec, config.image_size)
    if config.weights == "none":
        return backbones.build(spec, size, config.alpha, None), {
            "weights": "random", "detail": "random initialisation requested (weights: none)"}
    if config.weights == "imagenet":
        return _imagenet_backbone(spec, size, config)
    with tempfile.TemporaryDirectory() as workdir:
        path = storage.fetch(config.weights, workdir)
        with open(path, "rb") as handle:
            sha = hashlib.sha256(handle.read()).hexdigest()
        try:
            backbone = backbones.build(spec, size, config.alpha, path)
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(
                f"weights file {config.weights} does not match backbone {spec.name} "
                f"(alpha {config.alpha}): {str(error).splitlines()[0][:300]}; pass the headless "
                f"(include_top=False) weights of this backbone, 'imagenet' or 'none'") from error
    return backbone, {"weights": "file", "detail": f"{config.weights} (sha256 {sha})"}


def _imagenet_backbone(spec, size, config: ModelConfig):
    try:
        return backbones.build(spec, size, config.alpha, "imagenet"), {
            "weights": "imagenet", "detail": f"keras.applications.{spec.constructor} ImageNet"}
    except Exception as error:
        if "URL fetch failure" not in str(error):
            raise
        reason = f"ImageNet weights for {spec.name} could not be downloaded ({error})"
        if not config.allow_random_fallback:
            raise WeightsError(f"{reason}; connect to the internet, put the file in "
                               f"$KERAS_HOME/models, pass --weights FILE, or --weights none")
    log.warning("=" * 78)
    log.warning("NO PRETRAINED WEIGHTS: %s.", reason)
    log.warning("Continuing from RANDOM initialisation: accuracy will be far below what "
                "transfer learning gives. This is recorded in the outputs.")
    log.warning("=" * 78)
    return backbones.build(spec, size, config.alpha, None), {
        "weights": "random", "detail": f"fallback: {reason}"}


def build_head(feature_dim: int, num_classes: int, dropout: float) -> keras.Model:
    """features (batch, feature_dim) float32 -> class probabilities (batch, num_classes)."""
    return keras.Sequential([
        keras.Input((feature_dim,), name="features"),
        keras.layers.Dropout(dropout, name="dropout"),
        keras.layers.Dense(num_classes, activation="softmax", name="probabilities"),
    ], name="head")


def attach(backbone: keras.Model, preprocess_mode: str, image_size: int,
           head: keras.Model | None = None) -> keras.Model:
    """Raw RGB uint8 images (batch, H, W, 3), any H and W -> head output, or backbone features
    when `head` is None. The backbone runs with training=False, so BatchNorm stays in inference
    mode even when its layers are unfrozen."""
    images = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = RawImagePreprocessing(image_size, preprocess_mode, name="preprocess")(images)
    features = backbone(x, training=False)
    if head is None:
        return keras.Model(images, features, name="feature_extractor")
    return keras.Model(images, head(features), name="classifier")


def unfreeze_top(backbone: keras.Model, layers: int) -> list[str]:
    """Makes the top `layers` layers of `backbone` trainable, all others and every BatchNorm
    layer frozen. Returns the names of the layers that will train. Recompile afterwards."""
    total = len(backbone.layers)
    if not 0 < layers <= total:
        raise ValueError(f"cannot unfreeze {layers} layers: the backbone has {total}; use a "
                         f"count from 1 to {total}")
    backbone.trainable = True
    trained = []
    for position, layer in enumerate(backbone.layers):
        train = position >= total - layers and not isinstance(
            layer, keras.layers.BatchNormalization)
        layer.trainable = train
        if train and layer.weights:
            trained.append(layer.name)
    return trained


def unfreeze_count(backbone: keras.Model, requested: int, fraction: float) -> int:
    """`requested` layers, or `fraction` of the backbone's layers (at least 1) when it is 0."""
    return requested or max(1, int(round(len(backbone.layers) * fraction)))


def preflight(config: ModelConfig, unfreeze_layers: int) -> None:
    """Cheap checks that need Keras, run before any data is touched: the backbone builds at the
    configured size, the unfreeze count fits, and a local weights file matches the backbone."""
    spec = backbones.get(config.backbone)
    size = backbones.resolved_size(spec, config.image_size)
    try:
        backbone = backbones.build(spec, size, config.alpha, None)
    except ValueError as error:
        raise WeightsError(f"Keras cannot build {spec.name} at {size} px (alpha {config.alpha}): "
                           f"{error}; pick another size or backbone") from error
    if unfreeze_layers > len(backbone.layers):
        raise ValueError(f"finetune.unfreeze_layers={unfreeze_layers} but {spec.name} has only "
                         f"{len(backbone.layers)} layers; use at most {len(backbone.layers)}")
    if config.weights not in ("imagenet", "none") and not storage.is_gcs(config.weights):
        load_backbone(config)
    keras.backend.clear_session()


def save(model: keras.Model, path: str) -> None:
    """Saves a .keras file atomically."""
    with storage.atomic_file(path) as partial:
        keras_path = partial + ".keras"
        model.save(keras_path)
        os.replace(keras_path, partial)


def load(path: str) -> keras.Model:
    """Loads a .keras file with safe_mode on (no arbitrary code), tlpipe layers registered."""
    return keras.models.load_model(path, safe_mode=True)
