"""Transfer learning's first stage: the head trained on cached backbone features, one softmax
regression per L2 strength, all full-batch at once, early-stopped on val cross-entropy.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from components.core.config.schema import HeadConfig, LossConfig
from components.core.io import arrays
from components.core.train import model as models
from components.core.train.scoring import scores
from components.core.train.tensorboard import scalar_writer, write_scalars


log = logging.getLogger("tlpipe.training")

EVAL_EVERY = 10  # head training steps between two val checks

# Rows of features one matrix product of a head step takes: its temporaries are this many rows
# x candidates x classes floats, whatever the size of the training split.
HEAD_CHUNK_ROWS = 16384

HEAD_SCALARS = ("train_loss", "val_loss", "val_accuracy")  # per check, per candidate


def train_head(features: dict[str, np.ndarray], num_classes: int, head: HeadConfig,
               loss: LossConfig, dropout: float, log_dir: str | None = None,
               overwrite_features: bool = False) -> tuple[keras.Model, dict]:
    """Trains the head on cached features ({train,val}_{features,labels} arrays): one
    softmax regression on the standardised features per L2 strength in
    `head.l2_candidates`, each trained full-batch with Adam and early stopping on val
    cross-entropy (best weights kept); the candidate with the lowest val cross-entropy wins.

    Full-batch training on the cache converges in a few hundred steps of one matrix product
    each, so the search costs seconds, not epochs of Keras mini-batches.
    Returns (head, report): report has the chosen "l2", its "val_loss" (cross-entropy, no
    penalty) and "val_accuracy", "steps_run", its "history" (one row per val check), and
    "search" with the figures of every candidate. log_dir: TensorBoard logs, one folder per
    candidate.

    overwrite_features: standardise features["train_features"] (writeable float32) in place,
    so that it is the only copy of the training features held (N x D x 4 bytes, e.g. 1.5 GB
    for 300,000 images at 1,280 dims); by default a standardised copy is made.
    """
    standardize = models.fitted_standardize(features["train_features"])
    val_x = standardize.apply(features["val_features"])
    counts = np.bincount(features["train_labels"], minlength=num_classes).tolist()
    weights = models.class_weights(counts, loss.class_weight) or {}
    sample_weight = np.array([weights.get(int(y), 1.0) for y in features["train_labels"]],
                             np.float32)
    l2s = list(head.l2_candidates)
    x = standardize.apply(features["train_features"],
                          out=features["train_features"] if overwrite_features else None)
    fits = fit_softmax_regressions(x, features["train_labels"], sample_weight, val_x,
                                   features["val_labels"], num_classes, l2s, head,
                                   loss.label_smoothing)
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
    model = models.build_head(standardize, num_classes, dropout, chosen["l2"])
    model.get_layer("probabilities").set_weights([chosen.pop("kernel"), chosen.pop("bias")])
    search = [{key: c[key] for key in ("l2", "val_loss", "val_accuracy", "steps_run")}
              for c in candidates]
    return model, {**chosen, "search": search}


def fit_softmax_regressions(x, labels, sample_weight, val_x, val_labels, num_classes: int,
                            l2s: list[float], head: HeadConfig, label_smoothing: float):
    """One softmax regression per L2 strength in `l2s`, all trained at once on the
    standardised features x (N, D) (used in place when `arrays.is_aligned`): full-batch Adam on
    weighted, label-smoothed cross-entropy + l2 * ||kernel||^2, from zero weights (the problem
    is convex: no seed needed), at head.learning_rate for at most head.max_steps steps; label
    smoothing in [0, 0.5). Each candidate stops after head.patience val checks (every
    EVAL_EVERY steps) without a lower val cross-entropy; training ends when all have stopped.

    The candidates' weights are slices of one stacked variable and Adam is elementwise, so each
    follows exactly the trajectory it would alone: one traced step serves them all, and one
    graph call runs the EVAL_EVERY steps between two checks (not XLA-compiled: with the
    gradients written out, plain graph steps were faster, 0.52 vs 0.78 s on 1,234 x 256 x 10
    classes and 4.0 vs 4.3 s on 28,000, and XLA took 275 MB more on 112,000).
    Returns, per candidate, (kernel (D, C), bias (C,), history) at its best check."""
    import tensorflow as tf

    count = len(l2s)
    x = shared_tensor(x)
    weight = tf.constant(sample_weight / sample_weight.mean(), tf.float32)
    targets = (tf.one_hot(labels, num_classes) * (1 - label_smoothing)
               + label_smoothing / num_classes)
    penalty = tf.constant(l2s, tf.float32)[:, None, None]
    kernel = tf.Variable(tf.zeros((count, x.shape[1], num_classes)))
    bias = tf.Variable(tf.zeros((count, num_classes)))
    optimizer = keras.optimizers.Adam(head.learning_rate)
    optimizer.build([kernel, bias])  # its variables exist before tracing: one trace, not two

    def train_step():
        losses, gradients = _losses_and_gradients(x, targets, weight, kernel, bias, penalty)
        optimizer.apply_gradients(zip(gradients, [kernel, bias]))
        return losses

    @tf.function(input_signature=[tf.TensorSpec((), tf.int32)], autograph=False)
    def train_steps(steps):
        """Runs `steps` Adam steps in one graph call; returns the last step's losses (K,)."""
        return tf.while_loop(lambda i, _: i < steps, lambda i, _: (i + 1, train_step()),
                             (tf.constant(0), tf.zeros((count,))))[1]

    histories = [{"step": [], **{name: [] for name in HEAD_SCALARS}} for _ in l2s]
    best = [np.inf] * count
    best_weights = [None] * count
    checks_without_gain = [0] * count
    step = 0
    while step < head.max_steps:
        steps = min(EVAL_EVERY, head.max_steps - step)
        losses = train_steps(tf.constant(steps, tf.int32))
        step += steps
        kernels, biases, train_losses = kernel.numpy(), bias.numpy(), losses.numpy()
        active = [k for k in range(count) if checks_without_gain[k] < head.patience]
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
        if all(wait >= head.patience for wait in checks_without_gain):
            break
    return [(*best_weights[k], histories[k]) for k in range(count)]


def _losses_and_gradients(x, targets, weight, kernel, bias, penalty):
    """Each candidate's loss and its gradient with respect to kernel (K, D, C) and bias (K, C).
    The loss is the weighted cross-entropy against targets (N, C), averaged over the N rows of
    x (N, D), plus penalty (K, 1, 1) * ||kernel||^2; sums run over chunks of HEAD_CHUNK_ROWS
    rows.

    Written out (d entropy / d logits = softmax - targets, for targets that sum to 1) rather
    than taped, so that a step's temporaries are one chunk's and no copy of x is made: memory
    stays flat in N (taped and XLA-compiled, a 112,000 x 256 problem took 232 MB beside its
    features and their standardised copy; this way 82 MB, mostly fixed).
    Returns (losses (K,), [kernel gradient, bias gradient])."""
    import tensorflow as tf

    rows, dims = x.shape
    count, _, classes = kernel.shape
    stacked = tf.reshape(tf.transpose(kernel, [1, 0, 2]), (dims, count * classes))
    entropy = tf.zeros((count,))
    stacked_gradient = tf.zeros((dims, count * classes))
    bias_gradient = tf.zeros((count, classes))
    for start in range(0, rows, HEAD_CHUNK_ROWS):
        chunk = slice(start, start + HEAD_CHUNK_ROWS)
        logits = tf.reshape(x[chunk] @ stacked, (-1, count, classes)) + bias
        log_probabilities = tf.nn.log_softmax(logits)
        chunk_targets, chunk_weight = targets[chunk][:, None, :], weight[chunk][:, None, None]
        entropy += tf.reduce_sum(
            -tf.reduce_sum(chunk_targets * log_probabilities, axis=2, keepdims=True)
            * chunk_weight, axis=[0, 2])
        delta = (tf.exp(log_probabilities) - chunk_targets) * chunk_weight
        stacked_gradient += tf.matmul(x[chunk], tf.reshape(delta, (-1, count * classes)),
                                      transpose_a=True)
        bias_gradient += tf.reduce_sum(delta, axis=0)
    kernel_gradient = tf.transpose(tf.reshape(stacked_gradient, (dims, count, classes)),
                                   [1, 0, 2])
    losses = entropy / rows + tf.reduce_sum(penalty * tf.square(kernel), axis=[1, 2])
    return losses, [kernel_gradient / rows + 2 * penalty * kernel, bias_gradient / rows]


def shared_tensor(array: np.ndarray):
    """A float32 TensorFlow tensor over `array`'s own memory (dlpack, no copy) when it is
    float32, C-contiguous and aligned (`arrays.is_aligned`), else over one aligned copy.
    `tf.constant` would copy it, holding two extra copies at its peak (measured: +785 MB for
    a 400 MB array): for the head's full-batch features that was most of the step's memory."""
    import tensorflow as tf

    if not (array.dtype == np.float32 and arrays.is_aligned(array)):
        aligned = arrays.aligned_empty(array.shape)
        aligned[...] = array
        array = aligned
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
