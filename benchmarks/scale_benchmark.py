"""How tlpipe scales with the number of images: peak memory and wall time of every step, the
effect of one fine-tune epoch on val accuracy, and the input pipeline's speed per core.

    python benchmarks/scale_benchmark.py                       # 10,000 and 40,000 images
    python benchmarks/scale_benchmark.py --sizes 10000 40000 160000

For each size N: synthetic class folders (10 classes of N/10 128 px JPEGs, written class by
class, each class a colour and a shape with noise, so a pretrained backbone has something to
learn), then one whole `tlpipe run` (MobileNet v1 0.25 with ../shared's ImageNet weights at 128
px, 1 fine-tune epoch): each step's peak memory, the larger of the high-water mark of its
process (RUN/logs/STEP.memory.json, exact however short the peak) and the RSS of its process
tree (executor and every process under it, worker processes included) sampled every 0.25 s,
and its wall time (the console's step lines).
Then the input pipeline alone (`shards.training_epochs`: cached read + crops and flips, batch 64)
pinned to one core, at 128 and 224 px, from 1 and 16 training files, in images/s, projected to
an 8-core GPU node. Results go to benchmarks/SCALE_RESULTS.md. Needs psutil (a test
dependency).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WEIGHTS = os.path.join(ROOT, "..", "shared", "weights", "mobilenet_2_5_224_tf_no_top.h5")
CLASSES = 10
STEP_LINE = re.compile(r"^\s+ok\s+(\S+)\s+([\d.]+) s")
# the H200 figures of issue 27 (images/s, whole network trained, batch 256)
GPU_IMAGES_PER_SECOND = {"MobileNetV2 224 px": 3500, "EfficientNetB0 224 px": 3000,
                         "ResNet50 224 px": 2400, "MobileNet v1 0.25 160 px": 10700}


def write_images(folder: str, count: int, seed: int = 0) -> str:
    """`count` JPEGs of 128 px in CLASSES class folders, written class by class."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        target = os.path.join(folder, f"class{label:02d}")
        os.makedirs(target, exist_ok=True)
        colour = tuple(int(c) for c in rng.integers(40, 215, 3))
        for index in range(count // CLASSES):
            pixels = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) // 2 + 64
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(10, 70, 2))
            side = int(rng.integers(30, 56))
            box = (x, y, x + side, y + side)
            (draw.ellipse if label % 2 else draw.rectangle)(box, fill=colour)
            image.save(os.path.join(target, f"{index:06d}.jpg"), quality=90)
    return folder


def run_and_watch(data: str, output: str) -> dict:
    """One `tlpipe run`, its process tree sampled every 0.25 s. Returns {"steps": {step:
    {"seconds", "peak_rss_mb"}}, "wall_seconds", "summary"}."""
    import psutil

    command = [sys.executable, "-m", "pipelines.cli", "run", "--data", data, "--output",
               output, "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128",
               "--weights", WEIGHTS, "--finetune-epochs", "1"]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": ROOT})
    peaks: dict[str, float] = {}
    parent = psutil.Process(process.pid)
    while process.poll() is None:
        for step, rss in _step_trees(parent).items():
            peaks[step] = max(peaks.get(step, 0.0), rss)
        time.sleep(0.25)
    out = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"tlpipe run failed ({process.returncode}):\n{out[-3000:]}")
    seconds = {match.group(1): float(match.group(2))
               for match in map(STEP_LINE.match, out.splitlines()) if match}
    with open(os.path.join(output, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    recorded = {step: _recorded_peak(summary["run_dir"], step) for step in seconds}
    model_dir = summary["steps"]["finetune"]["outputs"]["model"]["path"]
    with open(os.path.join(model_dir, "finetune.json"), encoding="utf-8") as handle:
        finetune_input = json.load(handle)["input"]
    return {"steps": {step: {"seconds": seconds.get(step),
                             "peak_rss_mb": max(peaks.get(step, 0.0), recorded[step])}
                      for step in seconds},
            "wall_seconds": time.monotonic() - started, "summary": summary,
            "finetune_input": finetune_input}


def _recorded_peak(run_dir: str, step: str) -> float:
    """The step process's own record of its peak memory in MB (see stages.peak_memory)."""
    with open(os.path.join(run_dir, "logs", f"{step}.memory.json"), encoding="utf-8") as handle:
        return json.load(handle)["process_mb"]


def _step_trees(parent) -> dict[str, float]:
    """{step: RSS in MB of its executor process and all its descendants} now."""
    import psutil

    found = {}
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            line = child.cmdline()
        except psutil.Error:
            continue
        if "--function_to_execute" not in line:
            continue
        step = line[line.index("--function_to_execute") + 1].replace("_", "-")
        try:
            members = [child, *child.children(recursive=True)]
        except psutil.Error:  # it ended meanwhile
            continue
        total = 0.0
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass
        found[step] = max(found.get(step, 0.0), total / 2 ** 20)
    return found


INPUT_PROBE = """
import os, sys, time
os.sched_setaffinity(0, {0})  # one core
import numpy as np
import tensorflow as tf
from components.core.config.schema import AugmentConfig
from components.core.data import shards
from tests.helpers import write_image_cache

size, count, files, folder = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                              sys.argv[4])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
write_image_cache(folder, {"train": (images, np.arange(count) % 10),
                           "val": (images[:10], np.arange(10))},
                  classes=[str(c) for c in range(10)], train_files=files)
del images
epochs = shards.training_epochs(tf.distribute.get_strategy(), folder, 64, 42,
                                AugmentConfig(min_crop_scale=0.7), workers=1)
for epoch in range(2):  # the first epoch warms up
    started, seen = time.perf_counter(), 0
    for batch, _ in epochs.batches(epoch):
        seen += int(batch.shape[0])
    rate = seen / (time.perf_counter() - started)
print(rate)
"""


def input_pipeline_rate(size: int, count: int, files: int) -> float:
    """Images/s of one training epoch read from a resized cache of `count` random images of
    `size` px in `files` training files and augmented (crops, flips), as fine-tuning reads it
    in one process (`shards.training_epochs`), pinned to one core (after a warm-up epoch)."""
    with tempfile.TemporaryDirectory(prefix="tlpipe-input-") as folder:
        done = subprocess.run([sys.executable, "-c", INPUT_PROBE, str(size), str(count),
                               str(files), os.path.join(folder, "images")], cwd=ROOT,
                              check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT,
                                   "TF_CPP_MIN_LOG_LEVEL": "2"})
    return float(done.stdout.split()[-1])


def render(results: dict, rates: dict, sizes: list[int]) -> str:
    """SCALE_RESULTS.md."""
    steps = [step for step in results[sizes[0]]["steps"]]
    lines = [
        "# Scale benchmark", "",
        f"`python benchmarks/scale_benchmark.py --sizes {' '.join(map(str, sizes))}` on "
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Synthetic class folders (10 classes written class by "
        f"class, 128 px JPEGs), MobileNet v1 0.25 with ImageNet weights at 128 px, 1 fine-tune "
        f"epoch. Peak memory of each step: the larger of its process's recorded high-water mark "
        f"and its process tree's RSS sampled every 0.25 s; wall time from the console's step "
        f"lines.", "",
        "| step | " + " | ".join(f"{n:,} images: s, MB" for n in sizes) + " | "
        + " | ".join(f"peak {b:,}/{a:,}" for a, b in zip(sizes, sizes[1:])) + " | "
        + " | ".join(f"s per image {b:,}/{a:,}" for a, b in zip(sizes, sizes[1:])) + " |",
        "|---|" + "---|" * (len(sizes) + 2 * (len(sizes) - 1))]
    for step in steps:
        cells, peak_ratios, time_ratios = [], [], []
        for n in sizes:
            figures = results[n]["steps"].get(step, {})
            cells.append(f"{figures.get('seconds') or 0:.1f} s, "
                         f"{figures.get('peak_rss_mb') or 0:,.0f} MB")
        for a, b in zip(sizes, sizes[1:]):
            first, second = results[a]["steps"].get(step, {}), results[b]["steps"].get(step, {})
            peak_ratios.append(_ratio(second.get("peak_rss_mb"), first.get("peak_rss_mb")))
            time_ratios.append(_ratio((second.get("seconds") or 0) / b,
                                      (first.get("seconds") or 0) / a))
        lines.append(f"| {step} | " + " | ".join(cells + peak_ratios + time_ratios) + " |")
    lines += ["", "| images | whole run | training files / streams | head-only val accuracy "
              "| after 1 fine-tune epoch |", "|---|---|---|---|---|"]
    for n in sizes:
        model = results[n]["summary"]["steps"]["finetune"]["outputs"]["model"]
        read = results[n]["finetune_input"]
        lines.append(f"| {n:,} | {results[n]['wall_seconds'] / 60:.1f} min | "
                     f"{read['train_files']} / {read['streams']} | "
                     f"{model['metadata']['head_only_val_accuracy']:.4f} | "
                     f"{model['metadata']['finetuned_val_accuracy']:.4f} |")
    lines += ["", "Input pipeline (cached read + random crops and flips, batch 64, as fine-tuning "
              "reads it in one process), one core:", "",
              "| image size | training files | images/s per core | 8 cores (projected, x8) |",
              "|---|---|---|---|"]
    for (size, files), rate in rates.items():
        lines.append(f"| {size} px | {files} | {rate:,.0f} | {8 * rate:,.0f} |")
    lines += ["", "GPU consumption to compare with (issue 27, one H200, whole network trained): "
              + ", ".join(f"{name} {rate:,}/s" for name, rate in GPU_IMAGES_PER_SECOND.items())
              + ".", ""]
    return "\n".join(lines)


def _ratio(numerator, denominator) -> str:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000])
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "tlpipe-scale"))
    parser.add_argument("--output", default=os.path.join(HERE, "SCALE_RESULTS.md"))
    parser.add_argument("--input-images", type=int, default=4000,
                        help="images in the input-pipeline measurement (default: 4000)")
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        data = os.path.join(args.work, f"data-{size}")
        if not os.path.isdir(data):
            print(f"writing {size} images", flush=True)
            write_images(data + ".partial", size)
            os.rename(data + ".partial", data)
        print(f"tlpipe run on {size} images", flush=True)
        results[size] = run_and_watch(data, os.path.join(args.work, f"out-{size}"))
        print(json.dumps({k: v for k, v in results[size].items() if k != "summary"}),
              flush=True)
    rates = {(size, files): input_pipeline_rate(size, args.input_images, files)
             for size in (128, 224) for files in (1, 16)}
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(render(results, rates, args.sizes))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
