"""Backbone registry: name -> `keras.applications` constructor, preprocessing, sizes, unfreezing.

Only the data and its rules live here (nothing imports TensorFlow), so configs are validated
cheaply; `components.core.train.model.build_backbone` builds one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained backbone.

    constructor: attribute of `keras.applications`.
    module: the `keras.applications` submodule with the model's own `preprocess_input`.
    preprocess_mode: how raw [0, 255] RGB becomes the backbone's input (see
        `components.core.data.preprocessing.normalize`): "tf" -> [-1, 1], "torch" -> ImageNet
        mean/std, "caffe" -> BGR minus ImageNet mean, "none" -> the model rescales inside itself.
    default_size: the input side the ImageNet weights were trained at, in pixels.
    min_size: smallest input side Keras accepts with include_top=False, in pixels.
    unfreeze_fraction: default share of the backbone's layers, counted from the top, that
        fine-tuning trains, in (0, 1].
    alphas: width multipliers with published ImageNet weights; empty if the model has no alpha.
    """

    name: str
    constructor: str
    module: str
    preprocess_mode: str
    default_size: int
    min_size: int = 32
    unfreeze_fraction: float = 0.2
    alphas: tuple = ()


MAX_IMAGE_SIZE = 1024

_SPECS = [
    BackboneSpec("mobilenet", "MobileNet", "mobilenet", "tf", 224, alphas=(0.25, 0.5, 0.75, 1.0)),
    BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224,
                 alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    BackboneSpec("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", "none", 224,
                 alphas=(0.75, 1.0)),
    BackboneSpec("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", "none", 224,
                 alphas=(0.75, 1.0)),
    *[BackboneSpec(f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", "none", size)
      for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))],
    *[BackboneSpec(f"efficientnet_v2_{v.lower()}", f"EfficientNetV2{v}", "efficientnet_v2",
                   "none", size)
      for v, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384),
                      ("M", 480), ("L", 480))],
    *[BackboneSpec(f"resnet{depth}", f"ResNet{depth}", "resnet", "caffe", 224)
      for depth in (50, 101, 152)],
    *[BackboneSpec(f"resnet{depth}_v2", f"ResNet{depth}V2", "resnet_v2", "tf", 224)
      for depth in (50, 101, 152)],
    BackboneSpec("xception", "Xception", "xception", "tf", 299, min_size=71),
    BackboneSpec("inception_v3", "InceptionV3", "inception_v3", "tf", 299, min_size=75),
    BackboneSpec("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299,
                 min_size=75),
    *[BackboneSpec(f"densenet{depth}", f"DenseNet{depth}", "densenet", "torch", 224)
      for depth in (121, 169, 201)],
    *[BackboneSpec(f"convnext_{size}", f"ConvNeXt{size.capitalize()}", "convnext", "none", 224)
      for size in ("tiny", "small", "base", "large")],
    BackboneSpec("nasnet_mobile", "NASNetMobile", "nasnet", "tf", 224),
    BackboneSpec("vgg16", "VGG16", "vgg16", "caffe", 224),
]

REGISTRY = {spec.name: spec for spec in _SPECS}


def get(name: str) -> BackboneSpec:
    """The spec for `name`; ValueError listing the known names if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; use one of: {', '.join(sorted(REGISTRY))}")


def resolved_size(spec: BackboneSpec, image_size: int) -> int:
    """`image_size` in pixels, or the backbone's default when it is 0."""
    return image_size or spec.default_size


def problems(spec: BackboneSpec, image_size: int, alpha: float, weights: str) -> list[str]:
    """What is wrong with this backbone/size/alpha/weights combination, as fix-naming messages
    (whether a weights file exists is `weights_file_problems`)."""
    found = []
    size = resolved_size(spec, image_size)
    if not spec.min_size <= size <= MAX_IMAGE_SIZE:
        found.append(f"image size {size} is not possible for {spec.name}; use a size from "
                     f"{spec.min_size} to {MAX_IMAGE_SIZE} (its weights were trained at "
                     f"{spec.default_size})")
    if spec.alphas:
        if weights == "imagenet" and alpha not in spec.alphas:
            found.append(f"{spec.name} has ImageNet weights only for alpha in "
                         f"{list(spec.alphas)}, not {alpha}; pick one of those or --weights none")
        elif alpha <= 0:
            found.append(f"alpha={alpha}; use a positive width multiplier")
    elif alpha != 1.0:
        found.append(f"{spec.name} has no width multiplier; leave alpha at 1.0")
    return found


def weights_file_problems(weights: str) -> list[str]:
    """[a fix-naming message] when `weights` names a local file that does not exist here."""
    if weights in ("imagenet", "none") or weights.startswith("gs://") or os.path.isfile(weights):
        return []
    return [f"weights file {weights} does not exist; pass an existing .h5 file, a gs:// URI, "
            f"'imagenet' or 'none'"]
