"""Test accuracy of tlpipe's recipes over seeds, beside two baselines on the same splits.

    python benchmarks/accuracy_benchmark.py                 # hymenoptera, 160 px, 3 seeds
    python benchmarks/accuracy_benchmark.py --seeds 42 1 2 3 4 --recipes default mirror_average

Each (recipe, seed) is one `tlpipe run` (a fresh process, as a user runs it) on ../shared's
hymenoptera photos with MobileNet v1 alpha 0.25 and ../shared's ImageNet weights at 160 px. The
seed re-draws the train/val split of train/ and every training seed; the test split is the given
val/ folder, the same 153 images every time. Beside each seed's runs, on that run's own cached
frozen features: a converged linear probe (logistic regression, C picked on val) and a nearest-
centroid classifier, so a recipe's gain over what the frozen features already give is visible.

Reported per recipe: the test accuracy of every seed, the mean with a 95% t-interval over seeds
(t with n-1 degrees of freedom: the seed-to-seed spread, which on 153 test images is wide), the
mean of the per-run 95% bootstrap intervals' widths, and the wall time of one run. Results go
to benchmarks/ACCURACY_RESULTS.md.
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
DATA = os.path.join(SHARED, "data", "hymenoptera_data")
WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
RUN_FLAGS = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "160",
             "--weights", WEIGHTS]
# Recipes: config overrides on the default preset. "default" is what a user gets.
RECIPES = {
    "default": {},
    "mirror_average": {"model": {"mirror_average": True}},
    "augment_views_8": {"augment": {"views": 8}},
    "finetune_all_layers": {"finetune": {"learning_rate": 1e-4, "unfreeze_fraction": 1.0,
                                         "epochs": 20, "patience": 20, "batch_size": 16},
                            "augment": {"min_crop_scale": 0.35}},
}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}  # two-sided 95% Student t quantiles by degrees of freedom


def run_recipe(recipe: str, seed: int, work: str) -> dict:
    """One `tlpipe run`; returns its test accuracy, bootstrap interval, chosen model, wall s and
    run folder."""
    config = os.path.join(work, f"{recipe}.json")  # JSON is YAML
    with open(config, "w", encoding="utf-8") as handle:
        json.dump(RECIPES[recipe], handle)
    output = os.path.join(work, f"{recipe}-{seed}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--data", DATA, *RUN_FLAGS,
                    "--seed", str(seed), "--config", config, "--output", output],
                   check=True, stdout=subprocess.DEVNULL, cwd=os.path.dirname(HERE))
    wall = time.perf_counter() - started
    run_dir = json.load(open(os.path.join(output, "summary.json")))["run_dir"]
    record = json.load(open(glob.glob(os.path.join(run_dir, "evaluate", "evaluation",
                                                   "evaluation.json"))[0]))
    return {"test": record["metrics"]["accuracy"],
            "interval": record["intervals"]["accuracy"],
            "chosen": record["training"]["finetune"]["chosen"], "wall": wall, "run_dir": run_dir}


def baselines(run_dir: str, seed: int) -> dict:
    """Linear probe and nearest centroid on the run's cached frozen features (original views)."""
    from sklearn.neighbors import NearestCentroid

    from transfer_benchmark import linear_probe

    config = {"model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 160,
                        "weights": WEIGHTS}, "data": {"seed": seed}}
    step = {name: os.path.join(run_dir, "preprocess", name)
            for name in ("features", "backbone", "images")}
    probe = linear_probe(step["features"], step["backbone"], step["images"], config)
    centroid = _nearest_centroid_test(step, config, NearestCentroid())
    return {"linear_probe": probe["test"], "nearest_centroid": centroid}


def _nearest_centroid_test(step: dict, config: dict, classifier) -> float:
    from components.core.config.schema import PipelineConfig
    from components.core.data import cache
    from components.core.train import backbones, model as models

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--output", default=os.path.join(HERE, "ACCURACY_RESULTS.md"))
    args = parser.parse_args(argv)
    results, reference = {}, {}
    with tempfile.TemporaryDirectory(prefix="tlpipe-accuracy-") as work:
        for seed in args.seeds:
            for recipe in args.recipes:
                results.setdefault(recipe, []).append(run_recipe(recipe, seed, work))
                print(recipe, seed, results[recipe][-1], flush=True)
            reference[seed] = baselines(results[args.recipes[0]][-1]["run_dir"], seed)
            print("baselines", seed, reference[seed], flush=True)
    lines = [
        "# Accuracy benchmark: tlpipe recipes vs frozen-feature baselines", "",
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"`python benchmarks/accuracy_benchmark.py --seeds {' '.join(map(str, args.seeds))}`. "
        "hymenoptera (196 train + 49 val carved from train/ by the seed, 153 test = the given "
        "val/), MobileNet v1 alpha 0.25, ../shared's ImageNet weights, 160 px.", "",
        "Test accuracy in %: mean over seeds [95% t-interval over seeds]; per seed in order "
        f"{', '.join(map(str, args.seeds))}. Bootstrap width: mean width of the per-run 95% "
        "test-set bootstrap intervals (one image is 0.65 points).", "",
        "| recipe | test accuracy | per seed | bootstrap width | shipped model per seed "
        "| wall per run |", "|---|---|---|---|---|---|"]
    for name, key in (("linear probe (frozen features)", "linear_probe"),
                      ("nearest centroid (frozen features)", "nearest_centroid")):
        values = [reference[seed][key] for seed in args.seeds]
        lines.append(f"| {name} | {summary(values)} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in values)} | - | - | - |")
    for recipe in args.recipes:
        runs = results[recipe]
        tests = [run["test"] for run in runs]
        width = statistics.fmean(100 * (r["interval"][1] - r["interval"][0]) for r in runs)
        lines.append(
            f"| {recipe}: `{json.dumps(RECIPES[recipe])}` | {summary(tests)} "
            f"| {', '.join(f'{100 * value:.1f}' for value in tests)} | {width:.1f} "
            f"| {', '.join(r['chosen'] for r in runs)} "
            f"| {statistics.fmean(r['wall'] for r in runs):.0f} s |")
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
