"""Transfer learning's first stage: the head trained on cached backbone features, one softmax
regression per L2 strength, all full-batch at once, early-stopped on val cross-entropy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import keras
import numpy as np

from components.core.train import model as models
from components.core.train.scoring import scores
from components.core.train.tensorboard import scalar_writer, write_scalars

if TYPE_CHECKING:  # annotations only: config sits above this package
    from components.core.config.schema import PipelineConfig

log = logging.getLogger("tlpipe.training")

EVAL_EVERY = 10  # head training steps between two val checks

# Head steps are XLA-compiled from this many multiply-adds per step (train examples x feature
# dim x candidates x classes) on: XLA's compile (~0.3 s here) then pays for itself (measured:
# digits, 1234 x 256 x 4 x 10, 3.9 -> 2.7 s; ants/bees, 196 x 256 x 4 x 2, 0.4 -> 0.7 s).
HEAD_XLA_MIN_MULTIPLY_ADDS = 4_000_000

HEAD_SCALARS = ("train_loss", "val_loss", "val_accuracy")  # per check, per candidate


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
    val_x = standardize.apply(features["val_features"])
    counts = np.bincount(features["train_labels"], minlength=num_classes).tolist()
    weights = models.class_weights(counts, config.loss.class_weight) or {}
    sample_weight = np.array([weights.get(int(y), 1.0) for y in features["train_labels"]],
                             np.float32)
    l2s = list(config.head.l2_candidates)
    fits = fit_softmax_regressions(standardize.apply(features["train_features"]),
                                   features["train_labels"], sample_weight, val_x,
                                   features["val_labels"], num_classes, l2s, config)
    candidates = []
    for l2, (kernel, bias, history) in zip(l2s, fits):
        writer = scalar_writer(log_dir, f"l2={l2:g}")
        if writer is not None:
            for row, step in enumerate(history["step"]):
                write_scalars(writer, step, {name: history[name][row]
                                             for name in HEAD_SCALARS})
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


def fit_softmax_regressions(x, labels, sample_weight, val_x, val_labels, num_classes: int,
                            l2s: list[float], config: PipelineConfig):
    """One softmax regression per L2 strength in `l2s`, all trained at once: full-batch Adam on
    weighted, label-smoothed cross-entropy + l2 * ||kernel||^2, from zero weights (the problem
    is convex: no seed needed), for at most `config.head.max_steps` steps. Each candidate stops
    after `config.head.patience` val checks (every EVAL_EVERY steps) without a lower val
    cross-entropy; training ends when all have stopped.

    The candidates' weights are slices of one stacked variable and Adam is elementwise, so each
    follows exactly the trajectory it would alone: one traced step serves them all, and one
    graph call runs the EVAL_EVERY steps between two checks, XLA-compiled for large problems
    (HEAD_XLA_MIN_MULTIPLY_ADDS).
    Returns, per candidate, (kernel (D, C), bias (C,), history) at its best check."""
    import tensorflow as tf

    count = len(l2s)
    x = tf.constant(x, tf.float32)
    weight = tf.constant(sample_weight / sample_weight.mean(), tf.float32)
    smoothing = config.loss.label_smoothing
    targets = tf.one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes
    penalty = tf.constant(l2s, tf.float32)[:, None, None]
    kernel = tf.Variable(tf.zeros((count, x.shape[1], num_classes)))
    bias = tf.Variable(tf.zeros((count, num_classes)))
    optimizer = keras.optimizers.Adam(config.head.learning_rate)
    optimizer.build([kernel, bias])  # its variables exist before tracing: one trace, not two

    def train_step():
        with tf.GradientTape() as tape:
            logits = tf.einsum("nd,kdc->knc", x, kernel) + bias[:, None, :]
            entropy = tf.nn.softmax_cross_entropy_with_logits(
                tf.broadcast_to(targets, tf.shape(logits)), logits)
            losses = (tf.reduce_mean(entropy * weight, axis=1)
                      + tf.reduce_sum(penalty * tf.square(kernel), axis=[1, 2]))
            total = tf.reduce_sum(losses)  # each candidate's gradient is its own loss's
        optimizer.apply_gradients(zip(tape.gradient(total, [kernel, bias]), [kernel, bias]))
        return losses

    work = x.shape[0] * x.shape[1] * count * num_classes

    @tf.function(input_signature=[tf.TensorSpec((), tf.int32)], autograph=False,
                 jit_compile=work >= HEAD_XLA_MIN_MULTIPLY_ADDS)
    def train_steps(steps):
        """Runs `steps` Adam steps in one graph call; returns the last step's losses (K,)."""
        return tf.while_loop(lambda i, _: i < steps, lambda i, _: (i + 1, train_step()),
                             (tf.constant(0), tf.zeros((count,))))[1]

    histories = [{"step": [], **{name: [] for name in HEAD_SCALARS}} for _ in l2s]
    best = [np.inf] * count
    best_weights = [None] * count
    checks_without_gain = [0] * count
    step = 0
    while step < config.head.max_steps:
        steps = min(EVAL_EVERY, config.head.max_steps - step)
        losses = train_steps(tf.constant(steps, tf.int32))
        step += steps
        kernels, biases, train_losses = kernel.numpy(), bias.numpy(), losses.numpy()
        active = [k for k in range(count) if checks_without_gain[k] < config.head.patience]
        for k in active:
            val_loss, val_accuracy = scores(_softmax(val_x @ kernels[k] + biases[k]),
                                            val_labels)
            for name, value in zip(("step", *HEAD_SCALARS),
                                   (step, float(train_losses[k]), val_loss, val_accuracy)):
                histories[k][name].append(value)
            if val_loss < best[k]:
                best[k], best_weights[k], checks_without_gain[k] = val_loss, (kernels[k],
                                                                              biases[k]), 0
            else:
                checks_without_gain[k] += 1
        if all(wait >= config.head.patience for wait in checks_without_gain):
            break
    return [(*best_weights[k], histories[k]) for k in range(count)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
