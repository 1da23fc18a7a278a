"""Deterministic train/val/test assignment by content hash, and the checks on the split
(label conflicts, duplicates across splits).
"""

from __future__ import annotations

import hashlib

from components.core.config.schema import DataConfig
from components.core.data.discovery import SPLITS
from components.core.data.image_check import CheckedImage


def split_key(seed: int, sha256: str) -> str:
    """A hash of seed and content: what decides a file's split within its class."""
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def split_point(seed: int, sha256: str) -> float:
    """The file's position in [0, 1) for splitting, a function of its content and the seed only."""
    return int(split_key(seed, sha256)[:15], 16) / 16**15


def assign_splits(images: list[CheckedImage], classes: list[str],
                  config: DataConfig) -> dict[str, list[CheckedImage]]:
    """Seeded train/val/test assignment honouring given split folders (see module doc).

    A carved file goes to test when its split_point is below data.test_fraction, to val when it
    is below test_fraction + val_fraction, else to train: adding files never moves the old
    ones, so recurring retraining compares like with like. Two exceptions, for small classes
    only: a class left with no training image gets back its carved image with the highest point,
    and a carved split a class would have no image in gets one from a split that has two or
    more (train's lowest point first), so a class of 3 images has one in each (with 0.15 per
    split, a class of 20 images misses a split by chance 4% of the time, one of 50 0.03%).
    Returns {split: images}: val and test sorted by (label, relpath); train in a seeded random
    order (`training_order`), classes mixed.
    """
    given = {image.source.given_split for image in images}
    splits = {split: [] for split in SPLITS}
    for label in classes:
        members = [image for image in images if image.source.label == label]
        if None in given:
            pool, carve = members, ("test", "val")
        else:
            pool = [m for m in members if m.source.given_split == "train"]
            given_val = [m for m in members if m.source.given_split == "val"]
            given_test = [m for m in members if m.source.given_split == "test"]
            if "test" in given:
                splits["test"].extend(given_test)
                splits["val"].extend(given_val)
                carve = () if "val" in given else ("val",)
            else:
                splits["test"].extend(given_val)
                carve = ("val",)
        carved = _carve(pool, carve, config)
        for split, chosen in carved.items():
            splits[split].extend(chosen)
    ordered = {split: sorted(members, key=lambda m: (m.source.label, m.source.relpath))
               for split, members in splits.items()}
    ordered["train"].sort(key=lambda m: training_order(config.seed, m.sha256))
    return ordered


def training_order(seed: int, sha256: str) -> str:
    """A training file's place in the caches, a function of its content and the seed only: the
    caches hold the classes mixed, so the training stream's shuffle buffer
    (shards.whole_split_epoch, 4,096 images) mixes batches across classes however many images a
    class has (in class order, a class larger than the buffer filled whole batches alone), and
    new files never move the old ones relative to each other."""
    return split_key(seed + 1, sha256)


def _carve(pool: list[CheckedImage], carve: tuple, config: DataConfig) -> dict[str, list]:
    fractions = {"test": config.test_fraction, "val": config.val_fraction}
    chosen = {split: [] for split in ("train", *carve)}
    for member in sorted(pool, key=lambda m: split_point(config.seed, m.sha256)):
        point, edge = split_point(config.seed, member.sha256), 0.0
        for split in carve:
            edge += fractions[split]
            if point < edge:
                chosen[split].append(member)
                break
        else:
            chosen["train"].append(member)
    if pool and not chosen["train"]:  # the highest point of all sits last in the last split
        donor = next(split for split in reversed(carve) if chosen[split])
        chosen["train"].append(chosen[donor].pop())
    for split in carve:  # a small class whose points all missed a split still gets one image
        donor = next((d for d in ("train", *carve) if len(chosen[d]) >= 2), None)
        if not chosen[split] and donor:  # train's lowest point, or another split's highest
            chosen[split].append(chosen[donor].pop(0 if donor == "train" else -1))
    return chosen


def fingerprint(splits: dict[str, list[CheckedImage]]) -> str:
    """sha256 over every (split, class, content hash): equal iff the dataset content is equal."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for line in sorted(f"{split}\t{m.source.label}\t{m.sha256}" for m in splits[split]):
            digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def clean_test(splits: dict, conflicting: set) -> tuple[list, list[dict]]:
    """The test split without images whose content is also filed under another class, and what
    was left out, with why. (The same content twice in one class was already kept once, so no
    image can be in test and in train or val.)"""
    kept, excluded = [], []
    for member in splits["test"]:
        if member.sha256 in conflicting:
            excluded.append({"path": member.source.relpath,
                             "reason": "the same image is labelled with another class too"})
        else:
            kept.append(member)
    return kept, excluded


def label_conflicts(images: list[CheckedImage]) -> list[dict]:
    """Identical files (same sha256) filed under more than one class: {"sha256", "paths"}."""
    by_hash = {}
    for image in images:
        by_hash.setdefault(image.sha256, []).append(image)
    return [{"sha256": sha, "paths": [m.source.relpath for m in group]}
            for sha, group in sorted(by_hash.items())
            if len({m.source.label for m in group}) > 1]
