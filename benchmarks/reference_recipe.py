"""The hand-written reference: what an ML engineer writes in plain Keras to fine-tune a backbone,
run on a tlpipe run's own cached images and splits, so that tlpipe's recipe is judged against it
on exactly the same pixels.

    python benchmarks/reference_recipe.py RUN_DIR --weights FILE [--seed N] [--epochs 30]

RUN_DIR is a `tlpipe run` folder (`OUTPUT/runs/<pipeline>-<timestamp>`): its preprocess step's
resized images (train, val, test) are read; nothing of tlpipe's training code is used. The
recipe (issue 25's spec, the usual practice for small CNNs):
- head: 10 epochs on the frozen backbone, Adam 1e-3, dropout 0.2;
- then every layer but BatchNorm (kept in inference mode) for `--epochs` epochs: AdamW 3e-4,
  weight decay 1e-4, 2 epochs of linear warm-up then cosine decay to 0, batch 32, random resized
  crops (area 0.35-1, aspect 3/4-4/3) and left-right flips, label smoothing 0.1;
- the last epoch is kept (no selection on val).
Prints one JSON line: test accuracy, macro F1, wall seconds (training only, as tlpipe's step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

BATCH = 32
HEAD_EPOCHS = 10
WARMUP_EPOCHS = 2


def random_resized_crops(images, seed: int):
    """uint8 (B, S, S, 3) -> float32 (B, S, S, 3): a crop of 35-100% of the area with aspect
    3/4-4/3, resized back to S, mirrored left-right half of the time."""
    import tensorflow as tf

    batch, size = tf.shape(images)[0], tf.shape(images)[1:3]
    draws = tf.random.uniform([5, batch], seed=seed)
    area = 0.35 + 0.65 * draws[0]
    aspect = tf.exp(math.log(3 / 4) + draws[1] * (math.log(4 / 3) - math.log(3 / 4)))
    width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    height = tf.minimum(tf.sqrt(area / aspect), 1.0)
    top, left = draws[2] * (1 - height), draws[3] * (1 - width)
    right = left + width
    flipped = draws[4] < 0.5
    left, right = tf.where(flipped, right, left), tf.where(flipped, left, right)
    boxes = tf.stack([top, left, top + height, right], axis=1)
    return tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(batch), size)


def build(weights: str, size: int, classes: int, alpha: float):
    """MobileNet (alpha) with the weights file, BatchNorm in inference mode, a dropout + softmax
    head. Returns (model taking float [0, 255] pixels, backbone)."""
    import keras

    backbone = keras.applications.MobileNet(input_shape=(size, size, 3), include_top=False,
                                            weights=weights, alpha=alpha, pooling="avg")
    inputs = keras.Input((size, size, 3))
    x = keras.applications.mobilenet.preprocess_input(inputs)
    x = backbone(x, training=False)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs), backbone


def train(run_dir: str, weights: str, seed: int, epochs: int, alpha: float) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf
    from sklearn.metrics import f1_score

    from components.core.data import cache

    keras.utils.set_random_seed(seed)
    images_dir = os.path.join(run_dir, "preprocess", "images")
    splits = {split: cache.read_arrays(images_dir, split) for split in ("train", "val", "test")}
    train_x, train_y = splits["train"]
    size, classes = train_x.shape[1], int(train_y.max()) + 1
    started = time.perf_counter()
    model, backbone = build(weights, size, classes, alpha)
    onehot = lambda labels: keras.ops.one_hot(labels, classes)  # noqa: E731
    augmented = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
                 .shuffle(len(train_y), seed=seed).batch(BATCH)
                 .map(lambda x, y: (random_resized_crops(x, seed), onehot(y)))
                 .prefetch(2))
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    backbone.trainable = False
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(augmented, epochs=HEAD_EPOCHS, verbose=0)
    backbone.trainable = True
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    steps = math.ceil(len(train_y) / BATCH) * epochs
    warmup = math.ceil(len(train_y) / BATCH) * WARMUP_EPOCHS
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=3e-4,
                                                      warmup_steps=warmup)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss)
    model.fit(augmented, epochs=epochs, verbose=0)
    wall = time.perf_counter() - started
    test_x, test_y = splits["test"]
    predicted = model.predict(test_x.astype(np.float32), batch_size=64, verbose=0).argmax(1)
    return {"test": float(np.mean(predicted == test_y)),
            "macro_f1": float(f1_score(test_y, predicted, average="macro")), "wall": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--weights", required=True, help="MobileNet ImageNet weights file")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    print(json.dumps(train(args.run_dir, args.weights, args.seed, args.epochs, args.alpha)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
