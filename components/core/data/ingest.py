"""Ingest: a folder of labelled images -> checked RGB images in TFRecord shards plus a manifest
(discovery finds the files, image_check checks each, splitting assigns them, tfrecords writes).

Accepted layouts (hidden files and folders are ignored):
- class folders: ROOT/<class>/<image>; train/val/test are carved per class;
- split folders: ROOT/train/<class>/<image> with optional ROOT/val (or validation) and ROOT/test.
  Given splits are honoured. With train and val but no test, the given val becomes the test split
  and a new val is carved from train, so no reported accuracy comes from data that chose a model.

Splits are stratified and seeded: within a class, files are ordered by a hash of (seed, content
hash), so the same files and seed always give the same split.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from components.core.config.schema import DataConfig
from components.core.data.discovery import PLAIN_NAME, SPLITS, DataError, discover
from components.core.data.image_check import CheckedImage, check_all, identify_image
from components.core.data.splitting import assign_splits, clean_test, fingerprint, label_conflicts
from components.core.data.tfrecords import MANIFEST, write_shards
from components.core.io import storage


log = logging.getLogger("tlpipe.data")


def ingest_folder(root: str, output_dir: str, config: DataConfig, source: str = "") -> dict:
    """Checks, splits and shards a local image folder into `output_dir` (written atomically).
    `source`: the URI the folder came from, recorded in the manifest (default: the folder).

    Output: `<split>-NNNNN.tfrecord` shards of tf.train.Example records (image: 8-bit RGB JPEG or
    PNG bytes, label: class index, sha256, source: relative path) and `manifest.json`.
    Returns the manifest. Raises DataError before writing anything if the data cannot work.
    """
    classes, files = discover(root)
    images, skipped = check_all(files)
    splits, conflicts, excluded = plan_splits(root, classes, images, skipped, config)
    manifest = {
        "source": source or os.path.abspath(root),
        "classes": classes,
        "counts": {split: {label: sum(m.source.label == label for m in splits[split])
                           for label in classes} for split in SPLITS},
        "skipped": skipped,
        "converted": [{"path": m.source.relpath, "conversion": m.conversion}
                      for m in images if m.conversion],
        "label_conflicts": conflicts,
        "excluded_from_test": excluded,
        "imbalance_ratio": _imbalance(splits["train"], classes),
        "odd_names": [f.relpath for f in files if not PLAIN_NAME.match(os.path.basename(
            f.relpath))],
        "few_colours": [{"path": m.source.relpath, "colours": m.colours}
                        for m in images if m.colours],
        "fingerprint": fingerprint(splits),
        "split_config": dataclasses.asdict(config),
        "image_sizes": _size_summary(images),
    }
    with storage.atomic_dir(output_dir) as partial:
        manifest["shards"] = {split: write_shards(partial, split, splits[split], classes,
                                                  config.shard_size) for split in SPLITS}
        storage.write_json(os.path.join(partial, MANIFEST), manifest)
    log.info("ingested %s: %s", root, {s: len(splits[s]) for s in SPLITS})
    return manifest


def plan_splits(root: str, classes: list[str], images: list[CheckedImage],
                skipped: list[dict], config: DataConfig
                ) -> tuple[dict[str, list[CheckedImage]], list[dict], list]:
    """(splits, label conflicts, images left out of test) of the usable `images` of `root`
    (`skipped`: the files check_all skipped). DataError when a class has no usable image or
    a split would be empty."""
    empty = [label for label in classes if not any(i.source.label == label for i in images)]
    if empty:
        own = [entry for entry in skipped if entry["class"] == empty[0]]
        first = f"; {own[0]['path']}: {own[0]['reason']}" if own else ""
        more = f" (and {len(own) - 1} more like it)" if len(own) > 1 else ""
        raise DataError(f"class {empty[0]!r} has no usable image in {root}: all its files were "
                        f"skipped{first}{more}; add decodable images or remove the folder")
    splits = assign_splits(images, classes, config)
    _check_every_class_in_every_split(root, classes, splits)
    conflicts = label_conflicts(images)
    splits["test"], excluded = clean_test(splits, {c["sha256"] for c in conflicts})
    for split in SPLITS:
        if not splits[split]:
            raise DataError(f"the {split} split of {root} is empty; add images (at least 3 per "
                            f"class) or give a {split}/ folder")
    return splits, conflicts, excluded


def _check_every_class_in_every_split(root: str, classes: list[str], splits: dict) -> None:
    """DataError naming the first class missing from a split (as assigned, before test images
    with conflicting labels are set aside): with no val image its training is not watched,
    with no test image its recall and precision would be reported as measured (0% at support
    0) and the model blessed without it ever being tested."""
    for label in classes:
        counts = {split: sum(m.source.label == label for m in splits[split]) for split in SPLITS}
        if min(counts.values()) == 0:
            missing = [split for split in SPLITS if not counts[split]]
            raise DataError(
                f"class {label!r} of {root} has no image in {' or '.join(missing)} "
                f"({', '.join(f'{split} {count}' for split, count in counts.items())}): every "
                f"class needs at least one image in each split; add images to it (3 or more, "
                f"or one in each given split folder) or remove the folder")


def preview_counts(root: str, config: DataConfig) -> dict[str, int]:
    """Images per split that ingest will make of the local folder `root` ({split: count}),
    from every file's bytes and header (nothing is decoded): the preflight `tlpipe run` does
    before the pipeline. A file that ingest later finds truncated is counted here, so counts
    are upper bounds. DataError as ingest_folder would raise for the layout and splits."""
    classes, files = discover(root)
    images, skipped = check_all(files, identify_image, verbose=False)
    splits, _, _ = plan_splits(root, classes, images, skipped, config)
    return {split: len(members) for split, members in splits.items()}


def _imbalance(members: list[CheckedImage], classes: list[str]) -> float:
    """Largest over smallest class count (1.0 = balanced)."""
    counts = [sum(m.source.label == label for m in members) for label in classes]
    return round(max(counts) / max(min(counts), 1), 3)


def _size_summary(images: list[CheckedImage]) -> dict:
    widths = sorted(m.width for m in images)
    heights = sorted(m.height for m in images)
    return {"min_width": widths[0], "max_width": widths[-1],
            "median_width": widths[len(widths) // 2],
            "min_height": heights[0], "max_height": heights[-1],
            "median_height": heights[len(heights) // 2]}
