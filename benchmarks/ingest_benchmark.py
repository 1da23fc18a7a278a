"""Ingest rate: tlpipe's ingest step vs one plain `keras.utils.image_dataset_from_directory` pass
over the same small JPEGs, at two collection sizes (to show how memory grows with the count).

    python benchmarks/ingest_benchmark.py            # 2,500 and 10,000 JPEGs, 10 classes

(a) tlpipe: `ingestion.ingest_folder` as the ingest step runs it: list, decode and check every file
    (format, size, conversion need), hash it, split, and write TFRecord shards + manifest.
(b) keras: `image_dataset_from_directory(..., image_size=(64, 64))`, iterated once to the end
    (decode + resize, nothing written).
Each stage runs in its own process (TensorFlow already imported) and reports wall time, CPU time
and peak resident memory. Results go to benchmarks/INGEST_RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile

from transfer_benchmark import HERE, in_child, write_results

CLASSES = 10
SIDE = 64


def write_jpegs(folder: str, count: int, seed: int = 0) -> str:
    """`count` small RGB JPEGs (SIDE px, smooth colour fields with noise) in CLASSES folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, SIDE)[None, :, None]
    for index in range(count):
        label = index % CLASSES
        colour = rng.uniform(0, 255, 3) * ramp + rng.normal(0, 12, (SIDE, SIDE, 3)) + label * 8
        os.makedirs(os.path.join(folder, f"class{label}"), exist_ok=True)
        Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"class{label}", f"{index:06d}.jpg"), quality=90)
    return folder


def tlpipe_ingest(source: str, output: str) -> int:
    from components.core.config.schema import DataConfig
    from components.core.data import ingest as ingestion

    manifest = ingestion.ingest_folder(source, output, DataConfig())
    return sum(sum(counts.values()) for counts in manifest["counts"].values())


def keras_pass(source: str) -> int:
    import keras

    dataset = keras.utils.image_dataset_from_directory(source, image_size=(SIDE, SIDE),
                                                       batch_size=64, shuffle=False, verbose=False)
    return sum(int(images.shape[0]) for images, _ in dataset)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--output", default=os.path.join(HERE, "INGEST_RESULTS.md"))
    args = parser.parse_args(argv)
    lines = ["# Ingest benchmark: tlpipe ingest vs image_dataset_from_directory", "",
             f"Command: `python {' '.join(sys.argv)}`  ",
             f"Run {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}; {SIDE}x{SIDE} JPEGs (quality 90) in "
             f"{CLASSES} class folders.", "",
             "| images | stage | wall s | CPU s | peak MB | images/s | tlpipe / keras time |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for count in args.counts:
            source = write_jpegs(os.path.join(work, f"jpegs{count}"), count)
            ours = in_child(tlpipe_ingest, source, os.path.join(work, f"dataset{count}"))
            theirs = in_child(keras_pass, source)
            for name, (seen, wall, cpu, peak) in (("tlpipe ingest", ours),
                                                  ("keras image_dataset_from_directory", theirs)):
                lines.append(f"| {count} | {name} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | "
                             f"{seen / wall:.0f} | "
                             + (f"{ours[1] / theirs[1]:.2f}x |" if name.startswith("tlpipe")
                                else "1 |"))
    lines += ["", "tlpipe's ingest does more than the keras pass: it validates and hashes every "
                  "file, converts odd formats, splits and writes shards to disk; the keras pass "
                  "only decodes and resizes in memory. Peak memory is the whole process "
                  "(TensorFlow included).", ""]
    write_results(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
