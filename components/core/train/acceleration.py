"""Fine-tuning speed-ups for GPUs: mixed precision and XLA, resolved from the config and the
hardware the worker sees.

Mixed precision here is Keras's "mixed_bfloat16": the backbone computes in bfloat16 while its
variables, the head (standardisation and the softmax output layer) and the loss stay float32.
bfloat16 has float32's exponent range, so no loss scaling is needed; GPUs compute it fast from
compute capability 8.0 (Ampere: A100, A10, L4, RTX 30xx; Hopper: H100) on. Older GPUs (V100, T4)
would need float16 with dynamic loss scaling, which is not offered: "auto" keeps them float32.
The shipped model is always float32 in every layer.
"""

from __future__ import annotations

from components.core.config.schema import FINETUNE_PRECISIONS, XLA_SETTINGS

MIXED = "mixed_bfloat16"

FLOAT32 = "float32"

BFLOAT16_COMPUTE_CAPABILITY = (8, 0)  # lowest NVIDIA compute capability with fast bfloat16


def resolve_precision(setting: str, gpu_capabilities: list[tuple[int, int]]) -> str:
    """The Keras dtype policy fine-tuning computes the backbone in.

    setting: one of FINETUNE_PRECISIONS. "auto" gives MIXED when there is at least one GPU and every
    GPU has compute capability >= BFLOAT16_COMPUTE_CAPABILITY, else FLOAT32 (a CPU, or an
    older GPU). gpu_capabilities: (major, minor) of each visible GPU ([] on a CPU).
    """
    if setting not in FINETUNE_PRECISIONS:
        raise ValueError(f"unknown precision {setting!r}; use one of {FINETUNE_PRECISIONS}")
    if setting != "auto":
        return setting
    fast = bool(gpu_capabilities) and min(gpu_capabilities) >= BFLOAT16_COMPUTE_CAPABILITY
    return MIXED if fast else FLOAT32


def resolve_xla(setting: str, gpu_count: int) -> bool:
    """Whether fine-tuning's forward and backward pass is compiled with XLA. setting: one of
    XLA_SETTINGS; "auto" compiles where there is a GPU (on a CPU, XLA's compile time is not
    won back on small datasets)."""
    if setting not in XLA_SETTINGS:
        raise ValueError(f"unknown xla setting {setting!r}; use one of {XLA_SETTINGS}")
    return setting == "always" or (setting == "auto" and gpu_count > 0)


def gpu_capabilities() -> list[tuple[int, int]]:
    """(major, minor) compute capability of every GPU TensorFlow sees; [] on a CPU."""
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        found.append(tuple(details.get("compute_capability", (0, 0))))
    return found


def set_compute_policy(model, policy: str) -> None:
    """Sets the dtype policy of every layer of `model`, nested models' layers included, but
    its input layers (FLOAT32 or MIXED; variables stay float32 either way, so switching back
    and forth keeps the weights)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            set_compute_policy(layer, policy)
        if not isinstance(layer, keras.layers.InputLayer):
            layer.dtype_policy = policy
