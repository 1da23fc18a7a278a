"""The production model a candidate is compared with before it is blessed."""

from __future__ import annotations

import os
import tempfile

from components.core.errors import ConfigError
from components.core.evaluate import predict
from components.core.io import storage


def load_baseline(uri: str, classes: list[str]):
    """The production model to compare with, checked to classify the same classes."""
    from components.core.train import model as models

    with tempfile.TemporaryDirectory(prefix="tlpipe-baseline-") as scratch:
        path = storage.fetch(uri, scratch)
        if not (os.path.isfile(path) and path.endswith(".keras")):
            raise ConfigError(f"evaluate.baseline_model={uri!r} is not a .keras file; "
                              f"give the model/model.keras of an earlier run")
        labels = predict.labels_for(path)
        if labels is not None and labels != classes:
            raise ConfigError(f"baseline {uri} classifies {labels} but this run's "
                              f"classes are {classes}; give a baseline trained on the "
                              f"same classes")
        baseline = models.load(path)
    if baseline.output_shape[-1] != len(classes):
        raise ConfigError(f"baseline {uri} has {baseline.output_shape[-1]} outputs for "
                          f"{len(classes)} classes; give a baseline of the same task")
    return baseline
