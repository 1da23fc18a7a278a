"""Two-stage transfer learning: train_head() on cached features, then fine_tune() on images.

fine_tune() never ships a worse model: the fine-tuned weights are kept only if they beat the
head-only model on the validation split (lower loss and at least the same accuracy).
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np

from components.core import backbones, model as models
from components.core.config import PipelineConfig

log = logging.getLogger("tlpipe.training")

# BatchNorm moving-average momentum when training from scratch: Keras's 0.99 needs thousands of
# steps before the inference statistics mean anything, which small datasets never reach.
SCRATCH_BATCHNORM_MOMENTUM = 0.9


EVAL_EVERY = 10  # head training steps between two val checks


def train_head(features: dict[str, np.ndarray], num_classes: int, config: PipelineConfig,
               log_dir: str | None = None) -> tuple[keras.Model, dict]:
    """Trains the head on cached features ({train,val}_{features,labels} arrays): one
    softmax regression on the standardised features per L2 strength in
    `config.head.l2_candidates`, each trained full-batch with Adam and early stopping on val
    cross-entropy (best weights kept); the candidate with the lowest val cross-entropy wins.

    Full-batch training on the cache converges in a few hundred steps of one matrix product
    each, so the search costs seconds, not epochs of Keras mini-batches.
    Returns (head, report): report has the chosen "l2", its "val_loss" (cross-entropy, no
    penalty) and "val_accuracy", "steps_run", its "history" (one row per val check), and
    "search" with the figures of every candidate. log_dir: TensorBoard logs, one folder per
    candidate.
    """
    standardize = models.fitted_standardize(features["train_features"])
    train_x = np.asarray(standardize(features["train_features"]))
    val_x = np.asarray(standardize(features["val_features"]))
    counts = np.bincount(features["train_labels"], minlength=num_classes).tolist()
    weights = models.class_weights(counts, config.loss.class_weight) or {}
    sample_weight = np.array([weights.get(int(y), 1.0) for y in features["train_labels"]],
                             np.float32)
    candidates = []
    for l2 in config.head.l2_candidates:
        writer = _summary_writer(log_dir, f"l2={l2:g}")
        kernel, bias, history = fit_softmax_regression(
            train_x, features["train_labels"], sample_weight, val_x, features["val_labels"],
            num_classes, l2, config, writer)
        if writer is not None:
            writer.close()
        best = int(np.argmin(history["val_loss"]))
        candidates.append({"l2": l2, "val_loss": history["val_loss"][best],
                           "val_accuracy": history["val_accuracy"][best],
                           "steps_run": history["step"][-1], "kernel": kernel, "bias": bias,
                           "history": history})
        log.info("head l2=%g: val loss %.4f, val accuracy %.4f, best of %d steps", l2,
                 candidates[-1]["val_loss"], candidates[-1]["val_accuracy"],
                 history["step"][-1])
    chosen = min(candidates, key=lambda c: (c["val_loss"], -c["val_accuracy"], c["l2"]))
    head = models.build_head(standardize, num_classes, config.model.dropout, chosen["l2"])
    head.get_layer("probabilities").set_weights([chosen.pop("kernel"), chosen.pop("bias")])
    search = [{key: c[key] for key in ("l2", "val_loss", "val_accuracy", "steps_run")}
              for c in candidates]
    return head, {**chosen, "search": search}


def fit_softmax_regression(x, labels, sample_weight, val_x, val_labels, num_classes: int,
                           l2: float, config: PipelineConfig, writer=None):
    """Full-batch Adam on weighted, label-smoothed cross-entropy + l2 * ||kernel||^2, from zero
    weights (the problem is convex: no seed needed), for at most `config.head.max_steps` steps;
    stops after `config.head.patience` val checks (every EVAL_EVERY steps) without a lower val
    cross-entropy. Returns (kernel (D, C), bias (C,), history) at the best check."""
    import tensorflow as tf

    x = tf.constant(x, tf.float32)
    weight = tf.constant(sample_weight / sample_weight.mean(), tf.float32)
    smoothing = config.loss.label_smoothing
    targets = tf.one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes
    kernel = tf.Variable(tf.zeros((x.shape[1], num_classes)))
    bias = tf.Variable(tf.zeros((num_classes,)))
    optimizer = keras.optimizers.Adam(config.head.learning_rate)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            entropy = tf.nn.softmax_cross_entropy_with_logits(targets, x @ kernel + bias)
            loss = tf.reduce_mean(entropy * weight) + l2 * tf.reduce_sum(tf.square(kernel))
        optimizer.apply_gradients(zip(tape.gradient(loss, [kernel, bias]), [kernel, bias]))
        return loss

    history = {"step": [], "train_loss": [], "val_loss": [], "val_accuracy": []}
    best, best_weights, checks_without_gain = np.inf, None, 0
    for step in range(1, config.head.max_steps + 1):
        loss = train_step()
        if step % EVAL_EVERY and step != config.head.max_steps:
            continue
        logits = val_x @ kernel.numpy() + bias.numpy()
        val_loss, val_accuracy = _scores(_softmax(logits), val_labels)
        for name, value in (("step", step), ("train_loss", float(loss)),
                            ("val_loss", val_loss), ("val_accuracy", val_accuracy)):
            history[name].append(value)
        if writer is not None:
            with writer.as_default(step=step):
                for name in ("train_loss", "val_loss", "val_accuracy"):
                    tf.summary.scalar(name, history[name][-1])
        if val_loss < best:
            best, best_weights, checks_without_gain = val_loss, (kernel.numpy(),
                                                                 bias.numpy()), 0
        else:
            checks_without_gain += 1
            if checks_without_gain >= config.head.patience:
                break
    return (*best_weights, history)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _summary_writer(log_dir: str | None, name: str):
    if not log_dir:
        return None
    import tensorflow as tf

    return tf.summary.create_file_writer(os.path.join(log_dir, name))


def _evaluate(model: keras.Model, dataset) -> dict:
    """{"loss": cross-entropy without regularisation penalties, "accuracy"} on a batched
    (images, labels) dataset."""
    labels = np.concatenate([batch_labels.numpy() for _, batch_labels in dataset])
    loss, accuracy = _scores(model.predict(dataset, verbose=0), labels)
    return {"loss": loss, "accuracy": accuracy}


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy) of predicted probabilities (N, C)."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.mean(np.log(picked))), float(np.mean(probabilities.argmax(1) == labels))


def fine_tune(backbone_path: str, head_path: str, train, val, config: PipelineConfig,
              strategy, class_counts: list[int], pretrained: bool = True,
              log_dir: str | None = None) -> tuple[keras.Model, dict]:
    """Fine-tunes the backbone with the head inside `strategy.scope()`.

    train, val: batched tf.data datasets of (uint8 images, labels); the batch size is global.
    class_counts: training images per class (for the step count and class weights).
    The learning rate warms up linearly for finetune.warmup_epochs, then decays along a cosine
    to 0 at the last epoch; gradients are clipped to norm 1. log_dir: TensorBoard logs.
    pretrained: True trains the top layers (finetune.unfreeze_layers) at finetune.learning_rate
    with BatchNorm frozen in inference mode. False (random weights: nothing to transfer) trains
    every layer, BatchNorm included, at finetune.scratch_learning_rate: training from scratch.
    Returns (the model to ship, report) where report holds the head-only and fine-tuned val
    metrics, which one was chosen and why, the trained layer names and the history.
    """
    keras.utils.set_random_seed(config.data.seed)
    spec = backbones.get(config.model.backbone)
    size = backbones.resolved_size(spec, config.model.image_size)
    with strategy.scope():
        backbone = models.load(backbone_path)
        head = models.load(head_path)
        head_only = models.attach(backbone, spec.preprocess_mode, size, head)
        _compile(head_only, config.finetune.learning_rate, config.loss.label_smoothing)
    head_only_val = _evaluate(head_only, val)
    report = {"mode": "fine_tune" if pretrained else "from_scratch",
              "head_only_val": head_only_val, "finetuned_val": None, "history": {},
              "trained_layers": []}
    if config.finetune.epochs == 0:
        return head_only, {**report, "chosen": "head_only",
                           "reason": "fine-tuning disabled (finetune.epochs: 0)"}
    head_weights = _snapshot(head_only)
    with strategy.scope():
        if pretrained:
            tune = config.finetune
            count = models.unfreeze_count(backbone, tune.unfreeze_from, tune.unfreeze_layers,
                                          tune.unfreeze_fraction, spec.unfreeze_fraction)
            report["trained_layers"] = models.unfreeze_top(backbone, count)
            tuned, learning_rate = head_only, config.finetune.learning_rate
        else:
            backbone.trainable = True
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = SCRATCH_BATCHNORM_MOMENTUM
            report["trained_layers"] = [layer.name for layer in backbone.layers if layer.weights]
            tuned = models.attach(backbone, spec.preprocess_mode, size, head,
                                  batchnorm_inference=False)
            learning_rate = config.finetune.scratch_learning_rate
        steps = -(-sum(class_counts) // config.finetune.batch_size) * config.finetune.epochs
        _compile(tuned, warmup_cosine(learning_rate, steps, config.finetune.warmup_epochs /
                                      config.finetune.epochs), config.loss.label_smoothing)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.finetune.patience,
                                         restore_best_weights=True)
    callbacks = [stop, _EpochLog("finetune", every=1)]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir))
    history = tuned.fit(train, validation_data=val, epochs=config.finetune.epochs,
                        class_weight=models.class_weights(class_counts, config.loss.class_weight),
                        callbacks=callbacks, verbose=0)
    report["history"] = _history(history)
    report["finetuned_val"] = _evaluate(tuned, val)
    keep, reason = finetuned_is_better(head_only_val, report["finetuned_val"])
    log.info("shipping the %s model: %s", "fine-tuned" if keep else "head-only", reason)
    if keep:
        return tuned, {**report, "chosen": "finetuned", "reason": reason}
    _restore(head_only, head_weights)
    return head_only, {**report, "chosen": "head_only", "reason": reason}


def finetuned_is_better(head_only: dict, tuned: dict) -> tuple[bool, str]:
    """The never-worse rule on val metrics ({"loss", "accuracy"} dicts): keep the fine-tuned
    model only if its loss is lower and its accuracy at least as high. Returns (keep, reason)."""
    figures = (f"val loss {tuned['loss']:.4f} vs {head_only['loss']:.4f}, val accuracy "
               f"{tuned['accuracy']:.4f} vs {head_only['accuracy']:.4f} (fine-tuned vs head-only)")
    keep = tuned["loss"] < head_only["loss"] and tuned["accuracy"] >= head_only["accuracy"]
    verdict = "fine-tuning improved val" if keep else "fine-tuning did not improve val"
    return keep, f"{verdict}: {figures}"


def warmup_cosine(peak: float, total_steps: int, warmup_share: float):
    """Learning rate schedule: linear from 0 to `peak` over `warmup_share` (in [0, 1)) of
    `total_steps`, then cosine decay to 0 at the last step."""
    warmup = int(round(total_steps * warmup_share))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak, decay_steps=max(total_steps - warmup, 1),
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def _compile(classifier: keras.Model, learning_rate, label_smoothing: float) -> None:
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=1.0),
                       loss=models.SparseCrossentropy(label_smoothing), metrics=["accuracy"])


def _snapshot(model: keras.Model) -> dict:
    """Every variable's value by path (stable whatever the trainable flags are)."""
    return {variable.path: variable.numpy() for variable in model.weights}


def _restore(model: keras.Model, snapshot: dict) -> None:
    for variable in model.weights:
        variable.assign(snapshot[variable.path])


def _history(history) -> dict:
    return {name: [float(v) for v in values] for name, values in history.history.items()}


class _EpochLog(keras.callbacks.Callback):
    """Logs one progress line every `every` epochs (Keras's own bars flood step logs)."""

    def __init__(self, stage: str, every: int):
        super().__init__()
        self.stage, self.every = stage, every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch == 0:
            figures = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())
                               if isinstance(v, (int, float)))
            log.info("%s epoch %d: %s", self.stage, epoch + 1, figures)
