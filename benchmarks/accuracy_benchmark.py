"""Test accuracy of tlpipe's recipes over seeds, beside a hand-written reference and two
frozen-feature baselines on the same cached images and splits.

    python benchmarks/accuracy_benchmark.py                     # both datasets, 3 seeds
    python benchmarks/accuracy_benchmark.py --datasets trashnet --seeds 42 1 --recipes default

Each (dataset, recipe, seed) is one `tlpipe run` (a fresh process, as a user runs it) with
MobileNet v1 alpha 0.25 and ../shared's ImageNet weights: ../shared's hymenoptera photos at
160 px (the seed re-draws train/val from train/; the test split is the given val/, the same 153
images every time) and trashnet at 128 px (train/val/test carved by the seed). Recipes:
- default: what a user gets (`tlpipe run` with no config);
- tutorial: the textbook fine-tune tlpipe shipped before (Adam 1e-5 on the top 20% of the
  layers, 10 epochs, early stopping on val loss with patience 3, no label smoothing, no class
  weights, crops of 75-100% of the side).
On the default run's own cached images of each seed: the hand-written Keras reference
(benchmarks/reference_recipe.py, same pixels and splits), a converged linear probe (logistic
regression, C picked on val) and a nearest-centroid classifier on the cached frozen features.

Reported per dataset and method: test accuracy and macro F1, mean over seeds with a 95%
t-interval over seeds, per seed, and wall time: the whole `tlpipe run` for tlpipe's recipes, the
training (head + fine-tune, no process start or image caching) for the reference. Results go to
benchmarks/ACCURACY_RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(HERE), "..", "shared")
WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
DATASETS = {  # name: (folder, image size in px)
    "hymenoptera": (os.path.join(SHARED, "data", "hymenoptera_data"), 160),
    "trashnet": (os.path.join(SHARED, "data", "trashnet"), 128),
}
# Recipes: config overrides on the default preset. "default" is what a user gets.
RECIPES = {
    "default": {},
    "tutorial": {"finetune": {"epochs": 10, "learning_rate": 1e-5, "unfreeze_fraction": 0.2,
                              "warmup_epochs": 1, "weight_decay": 0.0,
                              "selection": "best_val_loss", "patience": 3},
                 "loss": {"label_smoothing": 0.0, "class_weight": "none"},
                 "augment": {"min_crop_scale": 0.75}},
}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}  # two-sided 95% Student t quantiles by degrees of freedom


def run_recipe(dataset: str, recipe: str, seed: int, work: str) -> dict:
    """One `tlpipe run`; returns its test accuracy, macro F1, chosen model, wall s and run
    folder."""
    config = os.path.join(work, f"{recipe}.json")  # JSON is YAML
    with open(config, "w", encoding="utf-8") as handle:
        json.dump(RECIPES[recipe], handle)
    folder, size = DATASETS[dataset]
    output = os.path.join(work, f"{dataset}-{recipe}-{seed}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--data", folder,
                    "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", str(size),
                    "--weights", WEIGHTS, "--seed", str(seed), "--config", config,
                    "--output", output],
                   check=True, stdout=subprocess.DEVNULL, cwd=os.path.dirname(HERE))
    wall = time.perf_counter() - started
    run_dir = json.load(open(os.path.join(output, "summary.json")))["run_dir"]
    record = json.load(open(glob.glob(os.path.join(run_dir, "evaluate", "evaluation",
                                                   "evaluation.json"))[0]))
    return {"test": record["metrics"]["accuracy"], "macro_f1": record["metrics"]["macro_f1"],
            "chosen": record["training"]["finetune"]["chosen"], "wall": wall, "run_dir": run_dir,
            "exports": exported_agreement(run_dir)}


def exported_agreement(run_dir: str) -> dict:
    """{format: (top-1 agreement with the Keras model, gate status)} of the run's reduced-
    precision TFLite and ONNX models ({} when the model was not blessed)."""
    found = {}
    for pattern, table in (("quantize/tflite/quantization.json", "variants"),
                           ("tensorrt/onnx/tensorrt.json", None)):
        paths = glob.glob(os.path.join(run_dir, pattern))
        if paths:
            figures = json.load(open(paths[0]))
            formats = figures[table] if table else {name: figures[name] for name in
                                                    ("onnx_fp16", "onnx_int8") if name in figures}
            found.update({name: (values["top1_agreement"], values["status"])
                          for name, values in formats.items() if name not in ("float32",)})
    return found


def reference(run_dir: str, seed: int) -> dict:
    """benchmarks/reference_recipe.py on the run's cached images, in its own process."""
    done = subprocess.run([sys.executable, os.path.join(HERE, "reference_recipe.py"), run_dir,
                           "--weights", WEIGHTS, "--seed", str(seed)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def baselines(run_dir: str, seed: int, size: int) -> dict:
    """Linear probe and nearest centroid on the run's cached frozen features (original views)."""
    from sklearn.neighbors import NearestCentroid

    from transfer_benchmark import linear_probe

    config = {"model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": size,
                        "weights": WEIGHTS}, "data": {"seed": seed}}
    step = {name: os.path.join(run_dir, "preprocess", name)
            for name in ("features", "backbone", "images")}
    probe = linear_probe(step["features"], step["backbone"], step["images"], config)
    centroid = _nearest_centroid_test(step, config, NearestCentroid())
    return {"linear_probe": {"test": probe["test"]},
            "nearest_centroid": {"test": centroid}}


def _nearest_centroid_test(step: dict, config: dict, classifier) -> float:
    from components.core.config.schema import PipelineConfig
    from components.core.data import cache
    from components.core.config import backbones
    from components.core.train import model as models

    settings = PipelineConfig.from_dict(config)
    spec = backbones.get(settings.model.backbone)
    arrays = cache.load_features(step["features"])
    extractor = models.attach(models.load(os.path.join(step["backbone"], "backbone.keras")),
                              spec.preprocess_mode,
                              backbones.resolved_size(spec, settings.model.image_size))
    images, labels = cache.read_arrays(step["images"], "test")
    classifier.fit(arrays["train_features"], arrays["train_labels"])
    return float(classifier.score(extractor.predict(images, verbose=0), labels))


def summary(values: list[float]) -> str:
    """Mean and 95% t-interval over seeds, in percent."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return f"{100 * mean:.1f} [{100 * (mean - half):.1f}, {100 * (mean + half):.1f}]"


def table(dataset: str, rows: dict, seeds: list[int]) -> list[str]:
    """The Markdown table of one dataset: rows {method: [per-seed dicts with "test" and
    optionally "macro_f1", "wall", "chosen"]}."""
    lines = [f"### {dataset} ({DATASETS[dataset][1]} px)", "",
             "| method | test accuracy | per seed | macro F1 | shipped model per seed "
             "| wall per run |", "|---|---|---|---|---|---|"]
    for method, runs in rows.items():
        tests = [run["test"] for run in runs]
        f1 = summary([run["macro_f1"] for run in runs]) if "macro_f1" in runs[0] else "-"
        wall = f"{statistics.fmean(run['wall'] for run in runs):.0f} s" if "wall" in runs[
            0] else "-"
        chosen = ", ".join(run["chosen"] for run in runs) if "chosen" in runs[0] else "-"
        lines.append(f"| {method} | {summary(tests)} "
                     f"| {', '.join(f'{100 * value:.1f}' for value in tests)} | {f1} "
                     f"| {chosen} | {wall} |")
    exported = rows.get("tlpipe default") or []
    names = sorted({name for run in exported for name in run["exports"]})
    if names:
        lines += ["", "Exported formats of `tlpipe default`: top-1 agreement with the Keras model "
                  "on the test images per seed (gate status: a = accepted, r = rejected).", "",
                  "| format | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
                  "|---|" + "---|" * len(seeds)]
        for name in names:
            cells = [f"{run['exports'][name][0]:.3f} ({run['exports'][name][1][0]})"
                     if name in run["exports"] else "-" for run in exported]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--output", default=os.path.join(HERE, "ACCURACY_RESULTS.md"))
    args = parser.parse_args(argv)
    tables = []
    for dataset in args.datasets:
        rows = {f"tlpipe {recipe}": [] for recipe in args.recipes}
        rows.update({"hand-written reference": [], "linear probe (frozen features)": [],
                     "nearest centroid (frozen features)": []})
        with tempfile.TemporaryDirectory(prefix="tlpipe-accuracy-") as work:
            for seed in args.seeds:
                for recipe in args.recipes:
                    rows[f"tlpipe {recipe}"].append(run_recipe(dataset, recipe, seed, work))
                    print(dataset, recipe, seed, rows[f"tlpipe {recipe}"][-1], flush=True)
                run_dir = rows[f"tlpipe {args.recipes[0]}"][-1]["run_dir"]
                rows["hand-written reference"].append(reference(run_dir, seed))
                found = baselines(run_dir, seed, DATASETS[dataset][1])
                rows["linear probe (frozen features)"].append(found["linear_probe"])
                rows["nearest centroid (frozen features)"].append(found["nearest_centroid"])
                print(dataset, "reference and baselines", seed,
                      rows["hand-written reference"][-1], found, flush=True)
        tables += table(dataset, rows, args.seeds)
    lines = [
        "# Accuracy benchmark: tlpipe's recipes vs a hand-written reference and frozen-feature "
        "baselines", "",
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; `python "
        f"benchmarks/accuracy_benchmark.py --datasets {' '.join(args.datasets)} --seeds "
        f"{' '.join(map(str, args.seeds))}`. MobileNet v1 alpha 0.25, ../shared's ImageNet "
        "weights. The reference and the baselines run on the `tlpipe "
        f"{args.recipes[0]}` run's cached images of each seed (same pixels, same splits).", "",
        "In %: mean over seeds [95% t-interval over seeds]; per seed in order "
        f"{', '.join(map(str, args.seeds))}. Wall: the whole `tlpipe run` (ingest to the "
        "exports) for tlpipe; head + fine-tune training for the reference.", "", *tables]
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
