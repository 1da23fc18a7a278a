"""The demo's embedded dataset: scikit-learn's 1,797 handwritten digits (8x8 greyscale, real
scans that ship inside the scikit-learn wheel, so the demo needs no download)."""

from __future__ import annotations

import os

import numpy as np


def write_digits(folder: str) -> str:
    """Writes the digits as greyscale PNGs in `folder/<digit>/<index>.png` (0-16 scaled to
    0-255) unless already there; returns `folder`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return folder
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        target = os.path.join(folder, str(label))
        os.makedirs(target, exist_ok=True)
        pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, "L").save(os.path.join(target, f"{index:04d}.png"))
    open(marker, "w").close()
    return folder
