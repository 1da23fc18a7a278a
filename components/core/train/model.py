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
import warnings

import keras

from components.core.config import backbones
from components.core.config.schema import FinetuneConfig, ModelConfig
from components.core.data.preprocessing import MirrorImages, RawImagePreprocessing
from components.core.errors import ConfigError, InputError
from components.core.io import storage
from components.core.train import recipe


log = logging.getLogger("tlpipe.model")


def build_backbone(spec: backbones.BackboneSpec, image_size: int, alpha: float, weights):
    """Builds the headless backbone `spec` with global average pooling.

    weights: "imagenet", None (random) or a local weights file path. Returns a `keras.Model`
    named "backbone" whose output is the pooled feature vector.
    """
    kwargs = dict(input_shape=(image_size, image_size, 3), include_top=False, weights=weights,
                  pooling="avg")
    if spec.alphas:
        kwargs["alpha"] = alpha
    constructor = getattr(keras.applications, spec.constructor)
    model = constructor(**kwargs)
    model.name = "backbone"
    return model


class WeightsError(InputError):
    """Backbone weights cannot be had or do not fit the backbone; the message names the fix."""


def load_backbone(config: ModelConfig) -> tuple[keras.Model, dict]:
    """Builds the configured backbone with its weights. Returns (backbone, provenance) where
    provenance is {"weights": "imagenet" | "file" | "random", "detail": str}."""
    spec = backbones.get(config.backbone)
    size = backbones.resolved_size(spec, config.image_size)
    if config.weights == "none":
        return build_backbone(spec, size, config.alpha, None), {
            "weights": "random", "detail": "random initialisation requested (weights: none)"}
    if config.weights == "imagenet":
        return _imagenet_backbone(spec, size, config)
    with tempfile.TemporaryDirectory() as workdir:
        path = storage.fetch(config.weights, workdir)
        with open(path, "rb") as handle:
            sha = hashlib.sha256(handle.read()).hexdigest()
        try:
            backbone = build_backbone(spec, size, config.alpha, path)
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(
                f"weights file {config.weights} does not match backbone {spec.name} "
                f"(alpha {config.alpha}): {str(error).splitlines()[0][:300]}; pass the headless "
                f"(include_top=False) weights of this backbone, 'imagenet' or 'none'") from error
    return backbone, {"weights": "file", "detail": f"{config.weights} (sha256 {sha})"}


def _imagenet_backbone(spec, size, config: ModelConfig):
    try:
        return build_backbone(spec, size, config.alpha, "imagenet"), {
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
    return build_backbone(spec, size, config.alpha, None), {
        "weights": "random", "detail": f"fallback: {reason}"}


def calibrate_batchnorm(backbone: keras.Model, preprocess_mode: str, image_size: int,
                        images) -> None:
    """For randomly initialised backbones only: sets every BatchNorm layer's moving mean and
    variance to the statistics of `images` (uint8 (N, H, W, 3), N of 32-256 training images).

    With random weights and BatchNorm at its initial statistics, activations shrink layer by
    layer (MobileNet features come out near 1e-18) and no head can learn from them. One forward
    pass in training mode with momentum 0 makes the random features usable. Pretrained backbones
    keep their ImageNet statistics: never call this on them.
    """
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    backbone(RawImagePreprocessing(image_size, preprocess_mode)(images), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


@keras.saving.register_keras_serializable(package="tlpipe")
class Standardize(keras.layers.Layer):
    """(x - mean) / std per feature, with mean and std fixed by `fit` (non-trainable weights).

    Keras's own Normalization layer keeps its statistics as captured constants, which the ONNX
    export turns into extra model inputs; plain weights export like any Dense kernel.
    """

    # A feature whose std is below this share of the median std is constant for all practical
    # purposes (a dead ReLU): it is ignored (scale 0) rather than blown up by 1/std, which would
    # overflow float16 exports and squander the int8 range.
    RELATIVE_STD_FLOOR = 1e-3

    def build(self, input_shape):
        size = (input_shape[-1],)
        self.mean = self.add_weight(shape=size, initializer="zeros", trainable=False,
                                    name="mean")
        self.inverse_std = self.add_weight(shape=size, initializer="ones", trainable=False,
                                           name="inverse_std")

    # Rows of features `fit` and `apply` take at a time: their memory is one chunk (in float64
    # for `fit`), not a copy of the features.
    CHUNK_ROWS = 16384

    def fit(self, features) -> None:
        """Sets the statistics from features (N, D), accumulated in float64 a chunk of rows at a
        time: the mean, then the mean squared deviation from it."""
        import numpy as np

        chunks = [features[start:start + self.CHUNK_ROWS]
                  for start in range(0, len(features), self.CHUNK_ROWS)]
        mean = sum(chunk.sum(axis=0, dtype=np.float64) for chunk in chunks) / len(features)
        std = np.sqrt(sum(np.square(chunk.astype(np.float64) - mean).sum(axis=0)
                          for chunk in chunks) / len(features))
        floor = self.RELATIVE_STD_FLOOR * np.median(std[std > 0]) if (std > 0).any() else np.inf
        self.mean.assign(mean.astype("float32"))
        self.inverse_std.assign(np.where(std > floor, 1.0 / np.maximum(std, floor), 0.0)
                                .astype("float32"))

    def apply(self, features, out=None):
        """`call` on a numpy array (N, D) -> float32 (N, D), a chunk of rows at a time (the same
        float32 arithmetic, no intermediate copies of the features), written into `out`
        (float32 (N, D); may be `features` itself) or a new array."""
        import numpy as np

        mean, inverse_std = self.mean.numpy(), self.inverse_std.numpy()
        standardized = np.empty(features.shape, np.float32) if out is None else out
        for start in range(0, len(features), self.CHUNK_ROWS):
            chunk = features[start:start + self.CHUNK_ROWS].astype(np.float32, copy=False)
            np.multiply(chunk - mean, inverse_std, out=standardized[start:start + len(chunk)])
        return standardized

    def call(self, features):
        return (features - self.mean) * self.inverse_std


def fitted_standardize(train_features) -> Standardize:
    """A `Standardize` layer holding the mean and std of `train_features` (N, D): backbone
    features range from ~1e-18 (random weights) to ~1e2, and a linear layer trained with Adam
    converges fast and reliably only on standardised inputs."""
    standardize = Standardize(name="standardize")
    standardize.build((None, train_features.shape[1]))
    standardize.fit(train_features)
    return standardize


def build_head(standardize: Standardize, num_classes: int, dropout: float,
               l2: float = 0.0) -> keras.Model:
    """features (batch, D) float32 -> class probabilities (batch, num_classes), the features
    first standardised by `standardize` (see `fitted_standardize`).

    l2: L2 penalty on the classification weights (per weight, added to the mean loss), >= 0.
    """
    return keras.Sequential([
        keras.Input((standardize.mean.shape[0],), name="features"),
        standardize,
        keras.layers.Dropout(dropout, name="dropout"),
        keras.layers.Dense(num_classes, activation="softmax", name="probabilities",
                           kernel_regularizer=keras.regularizers.L2(l2) if l2 else None),
    ], name="head")


def attach(backbone: keras.Model, preprocess_mode: str, image_size: int,
           head: keras.Model | None = None, batchnorm_inference: bool = True,
           mirror_average: bool = False) -> keras.Model:
    """Raw RGB uint8 images (batch, H, W, 3), any H and W -> head output, or backbone features
    when `head` is None. With batchnorm_inference (the default, for pretrained weights) the
    backbone runs with training=False, so BatchNorm stays in inference mode even when its layers
    are unfrozen; without it BatchNorm follows the training phase (training from scratch).
    mirror_average: the features are the mean of the backbone's features of the image and of
    its mirror image (see `ModelConfig.mirror_average`): two backbone passes per image."""
    images = keras.Input((None, None, 3), dtype="uint8", name="image")
    x = RawImagePreprocessing(image_size, preprocess_mode, name="preprocess")(images)
    training = False if batchnorm_inference else None
    features = backbone(x, training=training)
    if mirror_average:
        mirrored = backbone(MirrorImages(name="mirror")(x), training=training)
        features = keras.layers.Average(name="mirror_average")([features, mirrored])
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


def unfreeze_count(backbone: keras.Model, from_layer: str, layers: int, fraction: float,
                   default_fraction: float) -> int:
    """How many top layers to train: from `from_layer` (a layer name) up, else `layers`, else
    `fraction` of the backbone's layers, else `default_fraction` of them (at least 1)."""
    names = [layer.name for layer in backbone.layers]
    if from_layer:
        if from_layer not in names:
            raise ConfigError(f"finetune.unfreeze_from={from_layer!r} is not a layer of the "
                             f"backbone; its top layers are {names[-8:]}")
        return len(names) - names.index(from_layer)
    return layers or max(1, int(round(len(names) * (fraction or default_fraction))))


def preflight(config: ModelConfig, finetune: FinetuneConfig) -> None:
    """Checks that need Keras, run before any data is touched: the backbone builds at the
    configured size, the layers to unfreeze exist, a local weights file matches it, a gs://
    one can be read, and ImageNet weights are in the Keras cache (downloaded now if not, so
    that being offline fails here, not after ingest)."""
    spec = backbones.get(config.backbone)
    size = backbones.resolved_size(spec, config.image_size)
    try:
        backbone = build_backbone(spec, size, config.alpha, None)
    except ValueError as error:
        raise WeightsError(f"Keras cannot build {spec.name} at {size} px (alpha {config.alpha}): "
                           f"{error}; pick another size or backbone") from error
    if finetune.unfreeze_layers > len(backbone.layers):
        raise ConfigError(f"finetune.unfreeze_layers={finetune.unfreeze_layers} but {spec.name} "
                         f"has only {len(backbone.layers)} layers; use at most "
                         f"{len(backbone.layers)}")
    unfreeze_count(backbone, finetune.unfreeze_from, 0, 0.0, spec.unfreeze_fraction)
    if config.weights == "imagenet" and not config.allow_random_fallback:
        with warnings.catch_warnings():  # "weights for 224 px loaded": preprocess says it
            warnings.simplefilter("ignore", UserWarning)
            _imagenet_backbone(spec, size, config)  # into the Keras cache now, or fails
    elif storage.is_gcs(config.weights):
        from components.core.data.gcs import gcs_blob
        from components.core.data.discovery import DataError

        try:
            gcs_blob(config.weights)  # credentials, network and the object, not its bytes
        except DataError as error:
            raise WeightsError(f"model.weights: {error}") from None
    elif config.weights not in ("imagenet", "none"):
        load_backbone(config)
    keras.backend.clear_session()


@keras.saving.register_keras_serializable(package="tlpipe")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against probabilities, with optional label smoothing
    (share in [0, 0.5) of each target spread evenly over the classes)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        targets = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"),
                                    keras.ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(targets, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def class_weights(counts: list[int], mode: str) -> dict[int, float] | None:
    """Keras `class_weight` for training counts per class: None for mode "none"; for "balanced",
    N / (classes x count), so every class carries the same total weight; for "sqrt", the square
    root of that, scaled so the weights still average 1 over the training images (a small
    class gains weight without its few images dominating); "auto" is one of them
    (`recipe.class_weighting`)."""
    mode = recipe.class_weighting(mode, counts)
    if mode == "none":
        return None
    total, classes = sum(counts), len(counts)
    weights = [total / (classes * max(count, 1)) for count in counts]
    if mode == "sqrt":
        weights = [weight ** 0.5 for weight in weights]
        scale = total / sum(weight * count for weight, count in zip(weights, counts))
        weights = [weight * scale for weight in weights]
    return dict(enumerate(weights))


def save(model: keras.Model, path: str) -> None:
    """Saves a .keras file atomically."""
    with storage.atomic_file(path) as partial:
        keras_path = partial + ".keras"
        model.save(keras_path)
        os.replace(keras_path, partial)


def load(path: str) -> keras.Model:
    """Loads a .keras file with safe_mode on (no arbitrary code), tlpipe layers registered."""
    return keras.models.load_model(path, safe_mode=True)
