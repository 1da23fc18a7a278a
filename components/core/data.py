"""Ingest: a folder of labelled images -> checked RGB images in TFRecord shards plus a manifest.

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
import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Optional

from components.core import storage
from components.core.progress import Progress
from components.core.config import DataConfig

log = logging.getLogger("tlpipe.data")

SPLITS = ("train", "val", "test")
# A picture with this few distinct colours is a graphic (an "image not found" placeholder, a
# logo, a blank), not a photo: kept, but listed in the data report for a person to look at.
PLACEHOLDER_COLOURS = 64
PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # file names that need no quoting anywhere
SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
MANIFEST = "manifest.json"
STORED_AS_IS = ("JPEG", "PNG")  # formats TensorFlow decodes; other formats are re-encoded as PNG


class DataError(ValueError):
    """The source cannot become a dataset; the message names the problem and the fix."""


@dataclass
class SourceFile:
    """One file found in the source. given_split: the split folder it was in, if any."""

    path: str
    relpath: str
    label: str
    given_split: Optional[str] = None


@dataclass
class CheckedImage:
    """A source file that decoded; sha256 is of the file's bytes. conversion: how it was turned
    into 8-bit RGB ("" when stored as is), e.g. "CMYK JPEG -> RGB PNG"."""

    source: SourceFile
    sha256: str
    width: int
    height: int
    conversion: str
    colours: int = 0  # distinct colours when at most PLACEHOLDER_COLOURS, else 0 (a photo)


def discover(root: str) -> tuple[list[str], list[SourceFile]]:
    """Lists class names and candidate files of a local folder, checking the layout.

    Returns (sorted class names, files sorted by relative path). Raises DataError for a missing
    folder, fewer than two classes, or a class folder with no files.
    """
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist; pass a folder holding one subfolder "
                        f"of images per class")
    entries = _visible_subdirs(root)
    split_dirs = {SPLIT_FOLDER_NAMES[name.lower()]: name for name in entries
                  if name.lower() in SPLIT_FOLDER_NAMES}
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"{root} has split folders {sorted(split_dirs.values())} but no "
                            f"train/; add train/<class>/ folders or use plain class folders")
        files = []
        for split, name in sorted(split_dirs.items()):
            files.extend(_class_files(os.path.join(root, name), root, split))
        classes = sorted(_visible_subdirs(os.path.join(root, split_dirs["train"])))
        extra = sorted({f.label for f in files} - set(classes))
        if extra:
            raise DataError(f"class {extra[0]!r} has images in val/test but no train/{extra[0]}/ "
                            f"folder in {root}; add training images for it or remove it")
    else:
        files = _class_files(root, root, None)
        classes = sorted(entries)
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s) {classes}; a classifier needs "
                        f"at least two: put each class's images in its own subfolder")
    for label in classes:
        if not any(f.label == label for f in files):
            raise DataError(f"class folder {label!r} in {root} has no files; add images or "
                            f"remove the folder")
    return classes, sorted(files, key=lambda f: f.relpath)


def listing_fingerprint(root: str) -> str:
    """A cheap fingerprint of what `root` holds now (sha256 hex of each candidate file's relative
    path, size and modification time; no file is read). It changes when a file is added,
    removed, renamed or rewritten, so a cluster can key the ingest step's cache on it."""
    _, files = discover(root)
    digest = hashlib.sha256()
    for source in files:
        stat = os.stat(source.path)
        digest.update(f"{source.relpath}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _visible_subdirs(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def _class_files(folder: str, root: str, split: Optional[str]) -> list[SourceFile]:
    files = []
    for label in _visible_subdirs(folder):
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, label)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                files.append(SourceFile(path, os.path.relpath(path, root), label, split))
    return files


def check_image(source: SourceFile) -> tuple[Optional[CheckedImage], str]:
    """Decodes a file fully. Returns (CheckedImage, "") or (None, reason it is unusable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(source.path, "rb") as handle:
            content = handle.read()
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            conversion = _conversion_needed(image)
            width, height = image.size
            colours = len(_as_rgb(image).getcolors(PLACEHOLDER_COLOURS) or ())
    except UnidentifiedImageError:
        return None, "not an image file (no known image format)"
    except Exception as error:  # truncated, corrupt, decompression bomb, unreadable...
        return None, f"cannot be decoded: {type(error).__name__}: {error}"
    sha = hashlib.sha256(content).hexdigest()
    return CheckedImage(source, sha, width, height, conversion, colours), ""


def identify_image(source: SourceFile) -> tuple[Optional[CheckedImage], str]:
    """Like check_image, reading only the header (no pixel is decoded): cheap enough for a
    preflight, but a truncated file still passes. conversion and colours are left empty."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(source.path, "rb") as handle:
            content = handle.read()
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        return None, "not an image file (no known image format)"
    except Exception as error:
        return None, f"cannot be read: {type(error).__name__}: {error}"
    return CheckedImage(source, hashlib.sha256(content).hexdigest(), width, height, ""), ""


def _conversion_needed(image) -> str:
    orientation = image.getexif().get(0x0112, 1)
    if image.format in STORED_AS_IS and image.mode == "RGB" and orientation == 1:
        return ""
    rotated = " rotated by EXIF" if orientation != 1 else ""
    return f"{image.mode} {image.format}{rotated} -> RGB PNG"


def rgb_bytes(path: str) -> bytes:
    """The image at `path` as PNG-encoded 8-bit RGB (see `rgb_image`)."""
    buffer = io.BytesIO()
    rgb_image(path).save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_image(path: str):
    """The image at `path` as an 8-bit RGB PIL image, upright per its EXIF orientation.

    Greyscale and 16-bit images are scaled to 8 bits, alpha is composited on white, CMYK and
    palette images are converted, animations keep their first frame.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return _as_rgb(ImageOps.exif_transpose(image))


def _as_rgb(image):
    """A decoded PIL image as 8-bit RGB: 16-bit and 32-bit greyscale scaled from their real
    range (0-65535 when any value is above 255, else 0-255), alpha composited on white."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        image = Image.fromarray(np.round(pixels * (255.0 / top)).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                              "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


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
    Returns {split: images sorted by (label, relpath)}.
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
    return {split: sorted(members, key=lambda m: (m.source.label, m.source.relpath))
            for split, members in splits.items()}


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


def check_all(files: list[SourceFile], check=check_image,
              verbose: bool = True) -> tuple[list[CheckedImage], list[dict]]:
    """Checks every file with `check` (check_image: decodes it fully; identify_image: reads
    its header), with progress logs and a warning per skipped file when `verbose`. Exact
    duplicates within a class are kept once.

    Returns (usable images, skipped files as {"path", "class", "reason"}).
    """
    usable, skipped, seen = [], [], {}
    progress = Progress(log, "checked files", len(files))
    for source in files:
        checked, reason = check(source)
        if checked is not None:
            first = seen.setdefault((source.label, checked.sha256), source.relpath)
            if first != source.relpath:
                checked, reason = None, f"exact duplicate of {first} (kept once)"
        if checked is None:
            skipped.append({"path": source.relpath, "class": source.label, "reason": reason})
            if verbose:
                log.warning("skipping %s: %s", source.relpath, reason)
        else:
            usable.append(checked)
        progress.advance()
    return usable, skipped


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
    conflicts = _label_conflicts(images)
    splits["test"], excluded = _clean_test(splits, {c["sha256"] for c in conflicts})
    for split in SPLITS:
        if not splits[split]:
            raise DataError(f"the {split} split of {root} is empty; add images (at least 3 per "
                            f"class) or give a {split}/ folder")
    return splits, conflicts, excluded


def preview_counts(root: str, config: DataConfig) -> dict[str, int]:
    """Images per split that ingest will make of the local folder `root` ({split: count}),
    from every file's bytes and header (nothing is decoded): the preflight `tlpipe run` does
    before the pipeline. A file that ingest later finds truncated is counted here, so counts
    are upper bounds. DataError as ingest_folder would raise for the layout and splits."""
    classes, files = discover(root)
    images, skipped = check_all(files, identify_image, verbose=False)
    splits, _, _ = plan_splits(root, classes, images, skipped, config)
    return {split: len(members) for split, members in splits.items()}


def _clean_test(splits: dict, conflicting: set) -> tuple[list, list[dict]]:
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


def _imbalance(members: list[CheckedImage], classes: list[str]) -> float:
    """Largest over smallest class count (1.0 = balanced)."""
    counts = [sum(m.source.label == label for m in members) for label in classes]
    return round(max(counts) / max(min(counts), 1), 3)


def _label_conflicts(images: list[CheckedImage]) -> list[dict]:
    by_hash = {}
    for image in images:
        by_hash.setdefault(image.sha256, []).append(image)
    return [{"sha256": sha, "paths": [m.source.relpath for m in group]}
            for sha, group in sorted(by_hash.items())
            if len({m.source.label for m in group}) > 1]


def _size_summary(images: list[CheckedImage]) -> dict:
    widths = sorted(m.width for m in images)
    heights = sorted(m.height for m in images)
    return {"min_width": widths[0], "max_width": widths[-1],
            "median_width": widths[len(widths) // 2],
            "min_height": heights[0], "max_height": heights[-1],
            "median_height": heights[len(heights) // 2]}


def write_shards(directory: str, split: str, members: list[CheckedImage], classes: list[str],
                 shard_size: int) -> list[str]:
    """Writes `members` as TFRecord shards of at most `shard_size` records; returns file names."""
    import tensorflow as tf

    names, writer = [], None
    index = {label: i for i, label in enumerate(classes)}
    for number, member in enumerate(members):
        if number % shard_size == 0:
            if writer:
                writer.close()
            names.append(f"{split}-{len(names):05d}.tfrecord")
            writer = tf.io.TFRecordWriter(os.path.join(directory, names[-1]))
        if member.conversion:
            content = rgb_bytes(member.source.path)
        else:
            with open(member.source.path, "rb") as handle:
                content = handle.read()
            if hashlib.sha256(content).hexdigest() != member.sha256:
                raise DataError(f"{member.source.relpath} changed while it was being ingested; "
                                f"run ingest again once the source is stable")
        writer.write(_example(content, index[member.source.label], member).SerializeToString())
    if writer:
        writer.close()
    return names


def _example(content: bytes, label: int, member: CheckedImage):
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(content), "label": feature(label),
        "sha256": feature(member.sha256.encode()),
        "source": feature(member.source.relpath.encode())}))


def read_split(dataset_dir: str, split: str):
    """tf.data.Dataset of (uint8 image (H, W, 3), int64 label) for one split of an ingested
    dataset, in manifest order."""
    import tensorflow as tf

    manifest = storage.read_json(os.path.join(dataset_dir, MANIFEST))
    paths = [os.path.join(dataset_dir, name) for name in manifest["shards"][split]]
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        return image, example["label"]

    return tf.data.TFRecordDataset(paths).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
