"""Transfer learning's second stage: fine_tune() trains the backbone with the head
(head.train_head trained the head alone on cached features) under a tf.distribute strategy,
with the recipe of `recipe.resolve`.

fine_tune() never ships a clearly worse model: the fine-tuned weights are dropped when the
head-only model is clearly better on the validation split (a paired test, so that the noise
of a small val set does not decide).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import keras
import numpy as np

from components.core.config import backbones
from components.core.config.schema import FinetuneConfig, LossConfig, ModelConfig
from components.core.train import acceleration, backup, model as models, scoring
from components.core.train.tensorboard import scalar_writer, write_scalars

if TYPE_CHECKING:  # annotations only
    from components.core.data.shards import Epochs


log = logging.getLogger("tlpipe.training")

# BatchNorm moving-average momentum when training from scratch: Keras's 0.99 needs thousands of
# steps before the inference statistics mean anything, which small datasets never reach.
SCRATCH_BATCHNORM_MOMENTUM = 0.9


def fine_tune(backbone_path: str, head_path: str, train: Epochs, val, model_config: ModelConfig,
              tune: FinetuneConfig, loss: LossConfig, seed: int, strategy,
              class_counts: list[int], pretrained: bool = True, log_dir: str | None = None,
              backup_dir: str | None = None) -> tuple[keras.Model, dict]:
    """Fine-tunes the backbone with the head under `strategy` (one process or several workers).

    train: the training batches of every epoch, distributed by `strategy` (`shards.Epochs`:
    each worker reads its share). val: batched dataset every worker reads whole.
    model_config, tune, loss: the config's sections, resolved (`recipe.applied`: no "auto"
    setting left). seed: the data seed (weights drawn here, dropout masks).
    class_counts: training images per class (for the class weights).
    AdamW (finetune.weight_decay, biases not decayed); the learning rate warms up linearly for
    finetune.warmup_epochs, then decays along a cosine to 0 at the last epoch; gradients are
    all-reduced, then clipped to global norm CLIP_NORM. finetune.selection picks the weights
    kept (see `_fit`); then the never-worse guard (`finetuned_is_better`) decides between them
    and the head-only model. log_dir: TensorBoard logs (train/ and validation/).
    pretrained: True trains the top layers (finetune.unfreeze_*) at finetune.learning_rate
    with BatchNorm frozen in inference mode. False (random weights: nothing to transfer) trains
    every layer, BatchNorm included (statistics synchronised across workers), at
    finetune.scratch_learning_rate: training from scratch.
    backup_dir: this worker's backup directory (None: no backups). The training state is saved
    there after every epoch and restored at the start, so a restarted job resumes from the last
    completed epoch; it is removed when training ends.
    Returns (the model to ship, report) where report holds the head-only and fine-tuned val
    metrics, which one was chosen and why, the trained layer names, the history, the epoch
    training resumed from and how the training split was read (`input`).
    """
    if min(tune.epochs, tune.warmup_epochs) < 0:
        raise ValueError("fine_tune needs a resolved config: pass recipe.applied(config, "
                         "recipe.resolve(...))")
    keras.utils.set_random_seed(seed)
    spec = backbones.get(model_config.backbone)
    size = backbones.resolved_size(spec, model_config.image_size)
    with strategy.scope():
        backbone = models.load(backbone_path)
        head = models.load(head_path)
        head_only = models.attach(backbone, spec.preprocess_mode, size, head,
                                  mirror_average=model_config.mirror_average)
    head_only_examples = scoring.per_example(scoring.inference(head_only), val)
    head_only_val = scoring.summary(head_only_examples)
    report = {"mode": "fine_tune" if pretrained else "from_scratch",
              "head_only_val": head_only_val, "finetuned_val": None, "history": {},
              "trained_layers": [], "resumed_from_epoch": 0,
              "input": {**train.how, "steps_per_epoch": train.steps_per_epoch}}
    if tune.epochs == 0:
        return head_only, {**report, "chosen": "head_only",
                           "reason": "fine-tuning disabled (finetune.epochs: 0)"}
    head_weights = _snapshot(head_only)
    batchnorms = [layer for layer in backbone.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    with strategy.scope():
        if pretrained:
            count = models.unfreeze_count(backbone, tune.unfreeze_from, tune.unfreeze_layers,
                                          tune.unfreeze_fraction, spec.unfreeze_fraction)
            report["trained_layers"] = models.unfreeze_top(backbone, count)
            tuned, learning_rate = head_only, tune.learning_rate
        else:
            backbone.trainable = True
            for layer in batchnorms:
                layer.momentum = SCRATCH_BATCHNORM_MOMENTUM
                layer.synchronized = True  # batch statistics over the global batch
            report["trained_layers"] = [layer.name for layer in backbone.layers if layer.weights]
            tuned = models.attach(backbone, spec.preprocess_mode, size, head,
                                  batchnorm_inference=False,
                                  mirror_average=model_config.mirror_average)
            learning_rate = tune.scratch_learning_rate
        steps = train.steps_per_epoch * tune.epochs
        optimizer = keras.optimizers.AdamW(warmup_cosine(
            learning_rate, steps, tune.warmup_epochs / tune.epochs),
            weight_decay=tune.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        optimizer.build(tuned.trainable_variables)
    weights = models.class_weights(class_counts, loss.class_weight) or {}
    report.update(_accelerate(backbone, tune))
    step = _train_step(tuned, optimizer, strategy, loss.label_smoothing,
                       [weights.get(index, 1.0) for index in range(len(class_counts))],
                       report["xla"])
    history, report["resumed_from_epoch"] = _fit(tuned, optimizer, step, train.batches, val,
                                                 strategy, tune, log_dir, backup_dir)
    acceleration.set_compute_policy(backbone, acceleration.FLOAT32)  # shipped: float32
    for layer in batchnorms:
        layer.synchronized = False  # the shipped model runs anywhere
    report["history"] = history
    report["finetuned_weights_sha256"] = weights_digest(tuned)
    tuned_examples = scoring.per_example(scoring.inference(tuned), val)
    report["finetuned_val"] = scoring.summary(tuned_examples)
    keep, reason = finetuned_is_better(head_only_examples, tuned_examples)
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


def _fit(model: keras.Model, optimizer, step, train_batches, val, strategy,
         tune: FinetuneConfig, log_dir: str | None,
         backup_dir: str | None) -> tuple[dict, int]:
    """The epoch loop with a backup after every epoch. With finetune.selection "best_val_loss",
    early stopping on val loss (the best epoch's weights restored at the end); with "last",
    every epoch runs and the last one's weights stay. Returns (history {loss, accuracy,
    val_loss, val_accuracy: one value per epoch}, the epoch it resumed from)."""
    state = {"epoch": 0, "best_val_loss": None, "epochs_without_gain": 0,
             "history": {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}}
    best = _snapshot(model)
    agreed = backup.resume_epoch(strategy, backup_dir, tune.epochs) if backup_dir else 0
    if agreed:
        state, arrays = backup.load(backup_dir, agreed)
        backup.restore_state_arrays(model, optimizer, arrays)
        best = {path: arrays[f"best/{index}"] for index, path in enumerate(sorted(best))}
        log.info("finetune: resuming after epoch %d from the backup in %s", state["epoch"],
                 backup_dir)
    resumed_from, predict = state["epoch"], scoring.inference(model)
    writers = {name: scalar_writer(log_dir, name) for name in ("train", "validation")}
    early_stopping = tune.selection == "best_val_loss"
    for epoch in range(state["epoch"], tune.epochs):
        if early_stopping and state["epochs_without_gain"] >= tune.patience:
            break
        sums = np.sum([[float(value) for value in step(images, labels)]
                       for images, labels in train_batches(epoch)], axis=0)
        figures = {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2],
                   **{f"val_{name}": value
                      for name, value in scoring.evaluate(predict, val).items()}}
        for name, value in figures.items():
            state["history"][name].append(value)
        _write_epoch(writers, epoch, figures)
        log.info("finetune epoch %d/%d: %s", epoch + 1, tune.epochs,
                 " ".join(f"{name}={value:.4f}" for name, value in figures.items()))
        if (state["best_val_loss"] is None or figures["val_loss"] < state["best_val_loss"]
                or not early_stopping):
            state["best_val_loss"], state["epochs_without_gain"] = figures["val_loss"], 0
            best = _snapshot(model)
        else:
            state["epochs_without_gain"] += 1
        state["epoch"] = epoch + 1
        if backup_dir:
            backup.save(backup_dir, state["epoch"], state, backup.state_arrays(model, optimizer,
                                                                               best))
            log.info("finetune: backup of epoch %d saved in %s", epoch + 1, backup_dir)
    _restore(model, best)
    for writer in writers.values():
        if writer is not None:
            writer.close()
    if backup_dir:
        backup.remove(backup_dir)
    return state["history"], resumed_from


def _write_epoch(writers: dict, epoch: int, figures: dict) -> None:
    """TensorBoard scalars of one epoch: loss and accuracy under train/ and validation/."""
    for name, writer in writers.items():
        if writer is not None:
            prefix = "val_" if name == "validation" else ""
            write_scalars(writer, epoch, {f"epoch_{metric}": figures[prefix + metric]
                                          for metric in ("loss", "accuracy")})
            writer.flush()  # TensorBoard shows the epoch while training goes on


# The never-worse guard's one-sided z threshold: the head-only model is "clearly better" only
# when its edge on val is this many standard errors from zero (about 5% false alarms).
GUARD_Z = 1.645


def finetuned_is_better(head_only: dict, tuned: dict) -> tuple[bool, str]:
    """The never-worse guard, judged so that a small val set's noise does not decide it: both
    models' per-image val results ({"losses", "correct"} arrays over the same images, see
    `scoring.per_example`) are compared pair by pair, and the fine-tuned model is dropped only
    if the head-only one is clearly better on either count: its mean cross-entropy lower by more
    than GUARD_Z standard errors of the paired differences, or more images right only for it
    than only for the fine-tuned model by more than GUARD_Z x sqrt(discordant images) (McNemar,
    normal form). Returns (keep the fine-tuned model, reason with the figures)."""
    losses = np.asarray(tuned["losses"], np.float64) - np.asarray(head_only["losses"], np.float64)
    loss_error = losses.std(ddof=1) / np.sqrt(len(losses)) if len(losses) > 1 else 0.0
    only_head = int(np.sum(np.asarray(head_only["correct"]) & ~np.asarray(tuned["correct"])))
    only_tuned = int(np.sum(np.asarray(tuned["correct"]) & ~np.asarray(head_only["correct"])))
    worse_loss = losses.mean() > GUARD_Z * loss_error
    worse_accuracy = only_head - only_tuned > GUARD_Z * np.sqrt(only_head + only_tuned)
    before, after = scoring.summary(head_only), scoring.summary(tuned)
    figures = (f"val loss {after['loss']:.4f} vs {before['loss']:.4f} (paired difference "
               f"{losses.mean():+.4f}, standard error {loss_error:.4f}), val accuracy "
               f"{after['accuracy']:.4f} vs {before['accuracy']:.4f} ({only_tuned} images right "
               f"only fine-tuned, {only_head} only head-only; fine-tuned vs head-only, "
               f"{len(losses)} images)")
    if worse_loss or worse_accuracy:
        return False, f"the head-only model is clearly better on val: {figures}"
    return True, f"the head-only model is not clearly better on val: {figures}"


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
