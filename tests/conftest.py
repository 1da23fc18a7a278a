"""Shared fixtures: real tiny image folders, the ../shared assets, quiet TensorFlow."""

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MOBILENET_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
HYMENOPTERA = os.path.join(SHARED, "data", "hymenoptera_data")
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
GOLDEN_SETTINGS = os.path.join(GOLDEN, "settings.yaml")


def require_shared(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: the ../shared assets are not beside this checkout")
    return path


@pytest.fixture
def mobilenet_weights():
    return require_shared(MOBILENET_WEIGHTS)


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


@pytest.fixture
def digits_folder(tmp_path):
    return write_digits(tmp_path / "digits")
