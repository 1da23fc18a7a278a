"""Distribution strategy for fine-tuning.

`MultiWorkerMirroredStrategy` reads the cluster from `TF_CONFIG`; without it, it is one local
worker. Only the chief writes final outputs.
"""

from __future__ import annotations

import json
import os

COLLECTIVE_TIMEOUT_SECONDS = 600


def make_strategy(timeout_seconds: int = COLLECTIVE_TIMEOUT_SECONDS):
    """A MultiWorkerMirroredStrategy whose collectives give up after `timeout_seconds` (a frozen
    peer then fails the step instead of hanging it)."""
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_chief(tf_config: str | None = None) -> bool:
    """True for the worker that writes outputs: the chief task, or worker 0 when there is no
    chief, or the only process when TF_CONFIG is unset."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return True
    spec = json.loads(raw)
    task = spec.get("task", {})
    if "chief" in spec.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and task.get("index", 0) == 0


def distribute_options(dataset):
    """Shards a dataset across workers by element (DATA), which works for any number of files."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
