"""Two-stage transfer learning: train_head() on cached features, then fine_tune() on images.

fine_tune() never ships a worse model: the fine-tuned weights are kept only if they beat the
head-only model on the validation split (lower loss and at least the same accuracy).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import keras
import numpy as np

from components.core import acceleration, backbones, backup, model as models
from components.core.config import PipelineConfig

log = logging.getLogger("tlpipe.training")

# BatchNorm moving-average momentum when training from scratch: Keras's 0.99 needs thousands of
# steps before the inference statistics mean anything, which small datasets never reach.
SCRATCH_BATCHNORM_MOMENTUM = 0.9


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
    train_x = np.asarray(standardize(features["train_features"]))
    val_x = np.asarray(standardize(features["val_features"]))
    counts = np.bincount(features["train_labels"], minlength=num_classes).tolist()
    weights = models.class_weights(counts, config.loss.class_weight) or {}
    sample_weight = np.array([weights.get(int(y), 1.0) for y in features["train_labels"]],
                             np.float32)
    l2s = list(config.head.l2_candidates)
    fits = fit_softmax_regressions(train_x, features["train_labels"], sample_weight, val_x,
                                   features["val_labels"], num_classes, l2s, config)
    candidates = []
    for l2, (kernel, bias, history) in zip(l2s, fits):
        writer = _scalar_writer(log_dir, f"l2={l2:g}")
        if writer is not None:
            for row, step in enumerate(history["step"]):
                _write_scalars(writer, step, {name: history[name][row]
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
            val_loss, val_accuracy = _scores(_softmax(val_x @ kernels[k] + biases[k]),
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


def _scalar_writer(log_dir: str | None, run: str):
    """A TensorBoard event writer for `<log_dir>/<run>`, or None without a log_dir.

    TensorBoard's own writer (the one PyTorch's SummaryWriter uses), not tf.summary: an eager
    tf.summary op costs about a millisecond, and the head search logs hundreds of points in
    less time than that would take."""
    if not log_dir:
        return None
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    return EventFileWriter(os.path.join(log_dir, run))


def _write_scalars(writer, step: int, figures: dict[str, float]) -> None:
    """One event of scalar summaries {tag: value} at `step`."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in figures.items()]
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                     summary=summary_pb2.Summary(value=values)))


def _evaluate(predict, dataset) -> dict:
    """{"loss": cross-entropy without regularisation penalties, "accuracy"} on a batched
    (images, labels) dataset; predict: images -> probabilities (see `_inference`). Runs on this
    worker alone (every worker holds the same weights and reads all of `dataset`, so every
    worker gets the same figures and takes the same early-stopping decision)."""
    probabilities, labels = [], []
    for images, batch_labels in dataset:
        probabilities.append(predict(images).numpy())
        labels.append(batch_labels.numpy())
    return dict(zip(("loss", "accuracy"), _scores(np.concatenate(probabilities),
                                                   np.concatenate(labels))))


def _inference(model: keras.Model):
    """model(images, training=False) as a tf.function (traced once per batch shape)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def predict(images):
        return model(images, training=False)

    return predict


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy) of predicted probabilities (N, C)."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.mean(np.log(picked))), float(np.mean(probabilities.argmax(1) == labels))


def fine_tune(backbone_path: str, head_path: str, train_epoch, val, config: PipelineConfig,
              strategy, class_counts: list[int], pretrained: bool = True,
              log_dir: str | None = None, backup_dir: str | None = None
              ) -> tuple[keras.Model, dict]:
    """Fine-tunes the backbone with the head under `strategy` (one process or several workers).

    train_epoch: epoch number (0-based) -> batched tf.data dataset of (uint8 images, labels) for
    that epoch with the global batch size; the same on every worker (the strategy gives each
    worker its share of every batch). val: batched dataset every worker reads whole.
    class_counts: training images per class (for the step count and class weights).
    The learning rate warms up linearly for finetune.warmup_epochs, then decays along a cosine
    to 0 at the last epoch; gradients are all-reduced, then clipped to global norm CLIP_NORM.
    The best epoch by val loss is kept (early stopping after finetune.patience epochs without
    a lower val loss). log_dir: TensorBoard logs (train/ and validation/).
    pretrained: True trains the top layers (finetune.unfreeze_layers) at finetune.learning_rate
    with BatchNorm frozen in inference mode. False (random weights: nothing to transfer) trains
    every layer, BatchNorm included (statistics synchronised across workers), at
    finetune.scratch_learning_rate: training from scratch.
    backup_dir: this worker's backup directory (None: no backups). The training state is saved
    there after every epoch and restored at the start, so a restarted job resumes from the last
    completed epoch; it is removed when training ends.
    Returns (the model to ship, report) where report holds the head-only and fine-tuned val
    metrics, which one was chosen and why, the trained layer names, the history and the epoch
    training resumed from.
    """
    keras.utils.set_random_seed(config.data.seed)
    spec = backbones.get(config.model.backbone)
    size = backbones.resolved_size(spec, config.model.image_size)
    with strategy.scope():
        backbone = models.load(backbone_path)
        head = models.load(head_path)
        head_only = models.attach(backbone, spec.preprocess_mode, size, head,
                                  mirror_average=config.model.mirror_average)
    head_only_val = _evaluate(_inference(head_only), val)
    report = {"mode": "fine_tune" if pretrained else "from_scratch",
              "head_only_val": head_only_val, "finetuned_val": None, "history": {},
              "trained_layers": [], "resumed_from_epoch": 0}
    if config.finetune.epochs == 0:
        return head_only, {**report, "chosen": "head_only",
                           "reason": "fine-tuning disabled (finetune.epochs: 0)"}
    head_weights = _snapshot(head_only)
    batchnorms = [layer for layer in backbone.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    with strategy.scope():
        if pretrained:
            tune = config.finetune
            count = models.unfreeze_count(backbone, tune.unfreeze_from, tune.unfreeze_layers,
                                          tune.unfreeze_fraction, spec.unfreeze_fraction)
            report["trained_layers"] = models.unfreeze_top(backbone, count)
            tuned, learning_rate = head_only, config.finetune.learning_rate
        else:
            backbone.trainable = True
            for layer in batchnorms:
                layer.momentum = SCRATCH_BATCHNORM_MOMENTUM
                layer.synchronized = True  # batch statistics over the global batch
            report["trained_layers"] = [layer.name for layer in backbone.layers if layer.weights]
            tuned = models.attach(backbone, spec.preprocess_mode, size, head,
                                  batchnorm_inference=False,
                                  mirror_average=config.model.mirror_average)
            learning_rate = config.finetune.scratch_learning_rate
        steps = -(-sum(class_counts) // config.finetune.batch_size) * config.finetune.epochs
        optimizer = keras.optimizers.Adam(warmup_cosine(
            learning_rate, steps, config.finetune.warmup_epochs / config.finetune.epochs))
        optimizer.build(tuned.trainable_variables)
    weights = models.class_weights(class_counts, config.loss.class_weight) or {}
    report.update(_accelerate(backbone, config.finetune))
    step = _train_step(tuned, optimizer, strategy, config.loss.label_smoothing,
                       [weights.get(index, 1.0) for index in range(len(class_counts))],
                       report["xla"])
    history, report["resumed_from_epoch"] = _fit(tuned, optimizer, step, train_epoch, val,
                                                 strategy, config, log_dir, backup_dir)
    acceleration.set_compute_policy(backbone, acceleration.FLOAT32)  # shipped: float32
    for layer in batchnorms:
        layer.synchronized = False  # the shipped model runs anywhere
    report["history"] = history
    report["finetuned_weights_sha256"] = weights_digest(tuned)
    report["finetuned_val"] = _evaluate(_inference(tuned), val)
    keep, reason = finetuned_is_better(head_only_val, report["finetuned_val"])
    log.info("shipping the %s model: %s", "fine-tuned" if keep else "head-only", reason)
    if keep:
        return tuned, {**report, "chosen": "finetuned", "reason": reason}
    _restore(head_only, head_weights)
    return head_only, {**report, "chosen": "head_only", "reason": reason}


def _accelerate(backbone: keras.Model, tune) -> dict:
    """Puts the backbone in the compute precision `tune.precision` resolves to on this
    worker's hardware (the head stays float32). Returns {"precision": the dtype policy,
    "xla": whether the training step is XLA-compiled} for the report."""
    capabilities = acceleration.gpu_capabilities()
    policy = acceleration.resolve_precision(tune.precision, capabilities)
    acceleration.set_compute_policy(backbone, policy)
    xla = acceleration.resolve_xla(tune.xla, len(capabilities))
    log.info("finetune: backbone computes in %s, XLA %s (%d GPU(s))", policy,
             "on" if xla else "off", len(capabilities))
    return {"precision": policy, "xla": xla}


CLIP_NORM = 1.0  # global gradient norm fine-tuning clips to


def _train_step(model: keras.Model, optimizer, strategy, label_smoothing: float,
                class_weight: list[float], xla: bool = False):
    """A tf.function (images, labels) -> (summed weighted loss, correct predictions, examples)
    over one global batch (distributed values from the strategy's dataset). Each worker's
    gradients are summed across workers, clipped, then applied once: the same update as one
    process on the whole batch, whatever the number of workers. xla: each worker's forward
    and backward pass is XLA-compiled (the all-reduce stays outside)."""
    import tensorflow as tf

    loss = models.SparseCrossentropy(label_smoothing)
    weight_of = tf.constant(class_weight, tf.float32)
    variables = model.trainable_variables
    replicas = float(strategy.num_replicas_in_sync)

    def forward_backward(images, labels, examples):
        """This worker's share: (gradients of its part of the objective, its summed weighted
        loss, its correct predictions)."""
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            weighted = loss.call(labels, probabilities) * tf.gather(weight_of, labels)
            objective = tf.reduce_sum(weighted) / tf.maximum(examples, 1.0)
            if model.losses:  # regularisation: counted once across the replicas
                objective += tf.add_n(model.losses) / replicas
        correct = tf.reduce_sum(tf.cast(
            tf.argmax(probabilities, axis=1) == tf.cast(labels, tf.int64), tf.float32))
        return tape.gradient(objective, variables), tf.reduce_sum(weighted), correct

    if xla:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, labels):
        context = tf.distribute.get_replica_context()
        examples = context.all_reduce("SUM", tf.cast(tf.shape(labels)[0], tf.float32))
        gradients, weighted, correct = forward_backward(images, labels, examples)
        gradients = context.all_reduce("SUM", gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, CLIP_NORM)
        return gradients, weighted, correct, examples

    @tf.function
    def step(images, labels):
        gradients, weighted, correct, examples = strategy.run(replica_step, (images, labels))
        # identical on every replica after the all-reduce: apply one copy once
        optimizer.apply([strategy.experimental_local_results(g)[0] for g in gradients],
                        variables)
        return (strategy.reduce("SUM", weighted, axis=None),
                strategy.reduce("SUM", correct, axis=None),
                strategy.experimental_local_results(examples)[0])

    return step


def _fit(model: keras.Model, optimizer, step, train_epoch, val, strategy,
         config: PipelineConfig, log_dir: str | None,
         backup_dir: str | None) -> tuple[dict, int]:
    """The epoch loop with early stopping on val loss (best weights restored at the end) and a
    backup after every epoch. Returns (history {loss, accuracy, val_loss, val_accuracy: one
    value per epoch}, the epoch it resumed from)."""
    state = {"epoch": 0, "best_val_loss": None, "epochs_without_gain": 0,
             "history": {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}}
    best = _snapshot(model)
    agreed = _resume_epoch(strategy, backup_dir, config.finetune.epochs) if backup_dir else 0
    if agreed:
        state, arrays = backup.load(backup_dir, agreed)
        _restore_arrays(model, optimizer, arrays)
        best = {path: arrays[f"best/{index}"] for index, path in enumerate(sorted(best))}
        log.info("finetune: resuming after epoch %d from the backup in %s", state["epoch"],
                 backup_dir)
    resumed_from, predict = state["epoch"], _inference(model)
    writers = {name: _scalar_writer(log_dir, name) for name in ("train", "validation")}
    for epoch in range(state["epoch"], config.finetune.epochs):
        if state["epochs_without_gain"] >= config.finetune.patience:
            break
        totals = [step(images, labels) for images, labels in
                  strategy.experimental_distribute_dataset(train_epoch(epoch))]
        sums = np.sum([[float(value) for value in total] for total in totals], axis=0)
        figures = {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2],
                   **{f"val_{name}": value for name, value in _evaluate(predict, val).items()}}
        for name, value in figures.items():
            state["history"][name].append(value)
        _write_epoch(writers, epoch, figures)
        log.info("finetune epoch %d: %s", epoch + 1,
                 " ".join(f"{name}={value:.4f}" for name, value in figures.items()))
        if state["best_val_loss"] is None or figures["val_loss"] < state["best_val_loss"]:
            state["best_val_loss"], state["epochs_without_gain"] = figures["val_loss"], 0
            best = _snapshot(model)
        else:
            state["epochs_without_gain"] += 1
        state["epoch"] = epoch + 1
        if backup_dir:
            backup.save(backup_dir, state["epoch"], state, _backup_arrays(model, optimizer,
                                                                           best))
            log.info("finetune: backup of epoch %d saved in %s", epoch + 1, backup_dir)
    _restore(model, best)
    for writer in writers.values():
        if writer is not None:
            writer.close()
    if backup_dir:
        backup.remove(backup_dir)
    return state["history"], resumed_from


def _resume_epoch(strategy, backup_dir: str, epochs: int) -> int:
    """The epoch to resume after: the latest epoch every worker has a backup of (0: start
    afresh). A collective: every worker calls it. Workers can be one epoch apart when a group
    dies between their saves; each keeps its last two backups, so all hold this one."""
    import tensorflow as tf

    saved = backup.epochs(backup_dir)
    latest = min(saved[-1] if saved else 0, epochs)
    # the workers' latest epochs as counts per epoch (SUM is what collectives offer); the
    # lowest epoch with a count is the one all of them have
    counts = strategy.reduce("SUM", strategy.run(lambda: tf.one_hot(latest, epochs + 1)),
                             axis=None).numpy()
    agreed = int(np.flatnonzero(counts)[0])
    if agreed and agreed not in saved:
        raise RuntimeError(f"the backup of epoch {agreed} is missing from {backup_dir} (other "
                           f"workers resume from it); delete the backups to start afresh")
    return agreed


def _write_epoch(writers: dict, epoch: int, figures: dict) -> None:
    """TensorBoard scalars of one epoch: loss and accuracy under train/ and validation/."""
    for name, writer in writers.items():
        if writer is not None:
            prefix = "val_" if name == "validation" else ""
            _write_scalars(writer, epoch, {f"epoch_{metric}": figures[prefix + metric]
                                           for metric in ("loss", "accuracy")})
            writer.flush()  # TensorBoard shows the epoch while training goes on


def _backup_arrays(model: keras.Model, optimizer, best: dict) -> dict[str, np.ndarray]:
    """Everything a resumed run needs: the model's variables (random-generator states
    included), the optimizer's (step count, moments) and the best epoch's weights."""
    arrays = {f"model/{index}": variable.numpy() for index, variable in
              enumerate(model.variables)}
    arrays.update({f"optimizer/{index}": variable.numpy() for index, variable in
                   enumerate(optimizer.variables)})
    arrays.update({f"best/{index}": best[path] for index, path in enumerate(sorted(best))})
    return arrays


def _restore_arrays(model: keras.Model, optimizer, arrays: dict[str, np.ndarray]) -> None:
    for prefix, variables in (("model", model.variables), ("optimizer", optimizer.variables)):
        if sum(name.startswith(f"{prefix}/") for name in arrays) != len(variables):
            raise ValueError(f"the backup does not match this model's {prefix} variables: it "
                             "was written by another configuration; delete the backup "
                             "directory to start afresh")
        for index, variable in enumerate(variables):
            variable.assign(arrays[f"{prefix}/{index}"])


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


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of the model's trainable weights (values and order): equal on every worker when
    the replicas stayed in sync."""
    digest = hashlib.sha256()
    for variable in model.trainable_variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def _snapshot(model: keras.Model) -> dict:
    """Every variable's value by path (stable whatever the trainable flags are)."""
    return {variable.path: variable.numpy() for variable in model.weights}


def _restore(model: keras.Model, snapshot: dict) -> None:
    for variable in model.weights:
        variable.assign(snapshot[variable.path])
