"""THE image preprocessing definition: used by the model itself, the preprocess step, calibration.

Every exported model takes raw RGB uint8 images of any size: `RawImagePreprocessing` (a layer
inside the model) resizes them to the backbone's input size and applies the backbone's own
normalisation. The preprocess step resizes with the same `resize_images`, so cached training
images and served images go through one definition.
"""

from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)

IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

MODES = ("tf", "torch", "caffe", "none")


def resize_images(images, image_size: int):
    """Bilinear resize (no antialiasing) of a (batch, H, W, 3) tensor to (batch, size, size, 3).

    Returns float32 values in the input's range ([0, 255] for raw images). Aspect ratio is not
    kept: the whole picture is squeezed into the square, so nothing is cropped away.
    """
    images = ops.cast(images, "float32")
    return ops.image.resize(images, (image_size, image_size), interpolation="bilinear",
                            antialias=False)


def normalize(images, mode: str):
    """Maps float RGB in [0, 255] to what a backbone expects, per `BackboneSpec.preprocess_mode`.

    Equals `keras.applications.imagenet_utils.preprocess_input(images, mode=mode)` for "tf",
    "torch" and "caffe"; "none" passes images through (the backbone rescales them itself).
    """
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "torch":
        return (images / 255.0 - ops.array(IMAGENET_MEAN_RGB)) / ops.array(IMAGENET_STD_RGB)
    if mode == "caffe":
        return ops.flip(images, axis=-1) - ops.array(CAFFE_MEAN_BGR)
    if mode == "none":
        return images
    raise ValueError(f"unknown preprocess mode {mode!r}; use one of {MODES}")


@keras.saving.register_keras_serializable(package="tlpipe")
class RawImagePreprocessing(keras.layers.Layer):
    """Raw RGB uint8 images (batch, H, W, 3), any H and W -> backbone input (batch, S, S, 3).

    image_size: S, the backbone's input side in pixels. mode: see `normalize`.
    """

    def __init__(self, image_size: int, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; use one of {MODES}")
        self.image_size = int(image_size)
        self.mode = mode

    def call(self, images):
        return normalize(resize_images(images, self.image_size), self.mode)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "mode": self.mode}


@keras.saving.register_keras_serializable(package="tlpipe")
class MirrorImages(keras.layers.Layer):
    """Images (batch, H, W, C) mirrored left-right (the width axis reversed)."""

    def call(self, images):
        return ops.flip(images, axis=2)


def augment(images, seed, min_crop_scale: float, flip: bool):
    """Random views of a uint8 batch (B, S, S, 3) -> uint8 (B, S, S, 3).

    Each view is a random square crop whose side covers min_crop_scale..1 of the image side,
    resized back to S (bilinear), mirrored left-right with probability 0.5 when `flip`.
    seed: two integers (a shape-(2,) int tensor): the same seed gives the same views, on any
    worker and after a restart (stateless random ops, no generator state to carry).
    """
    import tensorflow as tf

    return crop_views(images, augment_draws(seed, tf.shape(images)[0]), min_crop_scale, flip)


def augment_draws(seed, count):
    """The random numbers of `count` views: float32 (4, count) uniform in [0, 1) from `seed`
    (shape-(2,) int); draws of several seeds side by side give several parts of one batch."""
    import tensorflow as tf

    return tf.random.stateless_uniform([4, count], tf.cast(seed, tf.int64))


def crop_views(images, draws, min_crop_scale: float, flip: bool):
    """`augment`'s views of a uint8 batch (B, S, S, 3) from its draws (4, B): crop side share,
    top, left, mirror."""
    import tensorflow as tf

    batch, size = tf.shape(images)[0], tf.shape(images)[1:3]
    scale = min_crop_scale + draws[0] * (1.0 - min_crop_scale)
    top = draws[1] * (1.0 - scale)
    left = draws[2] * (1.0 - scale)
    right = left + scale
    if flip:  # crop_and_resize mirrors a box whose x1 > x2
        mirrored = draws[3] < 0.5
        left, right = tf.where(mirrored, right, left), tf.where(mirrored, left, right)
    boxes = tf.stack([top, left, top + scale, right], axis=1)
    views = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(batch), size)
    return to_uint8(views)


def to_uint8(images):
    """Rounds and clips float [0, 255] images to uint8, as the resized-image cache stores them."""
    return ops.cast(ops.clip(ops.round(images), 0, 255), "uint8")
