"""Side-by-side: the public TensorFlow transfer-learning tutorial's recipe vs tlpipe's training
steps, on the same split, backbone, weights and image size, in one invocation.

    python benchmarks/transfer_benchmark.py   # ../shared's weights and ants/bees by default
    python benchmarks/transfer_benchmark.py --run hymenoptera:224   # one dataset and size

(a) tutorial: the frozen backbone runs every epoch behind RandomFlip + RandomRotation(0.2),
    Adam 1e-4 for 10 epochs; then the top third of the backbone is unfrozen and trained with
    RMSprop 1e-5 for 10 more epochs (tensorflow.org/tutorials/images/transfer_learning).
(b) tlpipe: preprocess (resize once + cached frozen features) and train-head, then finetune,
    through `components.core.stages`, exactly as the pipeline steps run them: the default
    config, 8 cached augmented views, and mirror averaging (not on digits, where mirroring
    changes the class).
Also timed: one frozen-backbone pass over the training set (decode and resize included), and a
converged linear probe (logistic regression, C chosen on val) on the frozen features.

Every measured stage runs in its own process (TensorFlow already imported), which reports its
wall time, CPU time and peak resident memory; the frozen pass is the median of 3 passes and
tlpipe's head stage the median of HEAD_REPEATS runs (the tutorial's stages, tens of seconds,
run once). Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(HERE), "..", "shared")
TUTORIAL_EPOCHS = 10
HEAD_REPEATS = 3  # runs of tlpipe's head stage per variant; the median is reported


def measured(function, *args):
    """Runs function(*args) in this (child) process; returns (result, wall s, cpu s, peak MB)."""
    import tensorflow  # noqa: F401  (import cost is not part of any stage)

    started, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return result, time.perf_counter() - started, time.process_time() - cpu, usage.ru_maxrss / 1024


def in_child(function, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measured, (function, *args))


def frozen_pass(dataset_dir: str, config: dict) -> float:
    """Seconds for one pass of decode + resize + frozen backbone over the training split (the
    median of three passes; building the model is not timed)."""
    import tensorflow as tf

    from components.core.config.schema import PipelineConfig
    from components.core.data import tfrecords
    from components.core.data.preprocessing import resize_images, to_uint8
    from components.core.config import backbones
    from components.core.train import model as models

    settings = PipelineConfig.from_dict(config)
    spec = backbones.get(settings.model.backbone)
    size = backbones.resolved_size(spec, settings.model.image_size)
    backbone, _ = models.load_backbone(settings.model)
    extractor = models.attach(backbone, spec.preprocess_mode, size)
    extract = tf.function(lambda images: extractor(images, training=False),
                          reduce_retracing=True)
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        for images, _ in tfrecords.read_split(dataset_dir, "train").map(
                lambda image, label: (to_uint8(resize_images(image[None], size))[0],
                                      label)).batch(64):
            extract(images)
        passes.append(time.perf_counter() - started)
    return sorted(passes)[1]


def tutorial(dataset_dir: str, config: dict) -> dict:
    """The tutorial's two stages, written out as published (multi-class softmax head)."""
    import keras
    import tensorflow as tf

    from components.core.config.schema import PipelineConfig
    from components.core.data import tfrecords
    from components.core.io import storage
    from components.core.config import backbones
    from components.core.train import model as models

    settings = PipelineConfig.from_dict(config)
    spec = backbones.get(settings.model.backbone)
    size = backbones.resolved_size(spec, settings.model.image_size)
    classes = len(storage.read_json(os.path.join(dataset_dir, tfrecords.MANIFEST))["classes"])

    def split(name, shuffle):
        dataset = tfrecords.read_split(dataset_dir, name).map(
            lambda image, label: (tf.image.resize(image, (size, size)), label))
        if shuffle:
            dataset = dataset.shuffle(1000, seed=0)
        return dataset.batch(32).prefetch(tf.data.AUTOTUNE)

    train, val, test = split("train", True), split("val", False), split("test", False)
    keras.utils.set_random_seed(0)
    base, _ = models.load_backbone(settings.model)
    base.trainable = False
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                     keras.layers.RandomRotation(0.2)])
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(augmentation(inputs))  # preprocess_input
    x = base(x, training=False)  # pooling="avg" in the registry: GlobalAveragePooling2D
    outputs = keras.layers.Dense(classes)(keras.layers.Dropout(0.2)(x))
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    stages = {}
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(train, validation_data=val, epochs=TUTORIAL_EPOCHS, verbose=0)
    stages["head"] = _scores(model, val, test, started, cpu)
    base.trainable = True
    for layer in base.layers[:len(base.layers) * 2 // 3]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=["accuracy"])
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(train, validation_data=val, epochs=2 * TUTORIAL_EPOCHS,
              initial_epoch=TUTORIAL_EPOCHS, verbose=0)
    stages["finetune"] = _scores(model, val, test, started, cpu)
    return stages


def _scores(model, val, test, started, cpu) -> dict:
    figures = {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu}
    for name, dataset in (("val", val), ("test", test)):
        figures[name] = model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"]
    return figures


def tlpipe_stage(name: str, args: tuple, config: dict) -> dict:
    from components.core import stages

    return getattr(stages, name)(*args, config=config)


def test_accuracy(model_path: str, backbone_dir: str, head_dir: str, images_dir: str,
                  config: dict) -> float:
    """Test accuracy of a .keras classifier, or of backbone + head when model_path is ''."""
    import numpy as np

    from components.core.config.schema import PipelineConfig
    from components.core.data import cache
    from components.core.config import backbones
    from components.core.train import model as models

    images, labels = cache.read_arrays(images_dir, "test")
    if model_path:
        classifier = models.load(model_path)
    else:
        settings = PipelineConfig.from_dict(config)
        spec = backbones.get(settings.model.backbone)
        classifier = models.attach(models.load(os.path.join(backbone_dir, "backbone.keras")),
                                   spec.preprocess_mode,
                                   backbones.resolved_size(spec, settings.model.image_size),
                                   models.load(os.path.join(head_dir, "head.keras")),
                                   mirror_average=settings.model.mirror_average)
    return float(np.mean(classifier.predict(images, verbose=0).argmax(1) == labels))


def linear_probe(features_dir: str, backbone_dir: str, images_dir: str, config: dict) -> dict:
    """Logistic regression on the original-view frozen features, C picked on val."""
    from sklearn.linear_model import LogisticRegression

    from components.core.config.schema import PipelineConfig
    from components.core.data import cache
    from components.core.config import backbones
    from components.core.train import model as models

    settings = PipelineConfig.from_dict(config)
    spec = backbones.get(settings.model.backbone)
    arrays = cache.load_features(features_dir)
    originals = len(arrays["train_labels"]) // (1 + settings.augment.views)
    train_x, train_y = arrays["train_features"][:originals], arrays["train_labels"][:originals]
    extractor = models.attach(models.load(os.path.join(backbone_dir, "backbone.keras")),
                              spec.preprocess_mode,
                              backbones.resolved_size(spec, settings.model.image_size))
    images, labels = cache.read_arrays(images_dir, "test")
    test_x = extractor.predict(images, verbose=0)
    fits = [LogisticRegression(C=c, max_iter=10000).fit(train_x, train_y)
            for c in (0.001, 0.01, 0.1, 1.0, 10.0)]
    best = max(fits, key=lambda fit: fit.score(arrays["val_features"], arrays["val_labels"]))
    return {"C": best.C, "val": best.score(arrays["val_features"], arrays["val_labels"]),
            "test": best.score(test_x, labels)}


def run_tlpipe(name: str, label: str, config: dict, dataset_dir: str, work: str) -> dict:
    """tlpipe's preprocess, train-head and finetune steps, each in its own process. The head
    stage (preprocess + train-head: seconds) runs HEAD_REPEATS times, each into fresh folders,
    and the repeat with the median wall time is reported and fine-tuned from."""
    repeats = sorted((_head_stage(name, label, config, dataset_dir, work, repeat)
                      for repeat in range(HEAD_REPEATS)),
                     key=lambda repeat: repeat[1]["preprocess"][1] + repeat[1]["train_head"][1])
    paths, runs = repeats[len(repeats) // 2]
    runs["finetune"] = in_child(tlpipe_stage, "finetune", (paths["images"], paths["backbone"],
                                                           paths["head"], paths["model"]), config)
    print(f"[{name}] {label} finetune {runs['finetune'][1]:.1f} s", flush=True)
    return {
        "paths": paths, "runs": runs,
        "head_wall": runs["preprocess"][1] + runs["train_head"][1],
        "head_cpu": runs["preprocess"][2] + runs["train_head"][2],
        "head_mb": max(runs["preprocess"][3], runs["train_head"][3]),
        "head_test": in_child(test_accuracy, "", paths["backbone"], paths["head"],
                              paths["images"], config)[0],
        "final_test": in_child(test_accuracy, os.path.join(paths["model"], "model.keras"), "",
                               "", paths["images"], config)[0]}


def _head_stage(name: str, label: str, config: dict, dataset_dir: str, work: str,
                repeat: int) -> tuple[dict, dict]:
    """One run of preprocess and train-head into fresh folders: (paths, {stage: measured})."""
    paths = {key: os.path.join(work, name, label, f"repeat-{repeat}", key)
             for key in ("images", "features", "backbone", "head", "model")}
    runs = {}
    for stage, args in (("preprocess", (dataset_dir, paths["images"], paths["features"],
                                        paths["backbone"])),
                        ("train_head", (paths["features"], paths["head"]))):
        runs[stage] = in_child(tlpipe_stage, stage, args, config)
        print(f"[{name}] {label} {stage} {runs[stage][1]:.1f} s", flush=True)
    return paths, runs


def tlpipe_rows(label: str, result: dict) -> list[str]:
    runs, tuned = result["runs"], result["runs"]["finetune"][0]
    return [
        f"| {label} | head, median of {HEAD_REPEATS}: preprocess "
        f"({runs['preprocess'][1]:.1f} s) + train-head ({runs['train_head'][1]:.1f} s) | "
        f"{result['head_wall']:.1f} | "
        f"{result['head_cpu']:.1f} | {result['head_mb']:.0f} | "
        f"{runs['train_head'][0]['val_accuracy']:.4f} | {result['head_test']:.4f} |",
        f"| {label} | finetune (shipped: {tuned['chosen']}) | {runs['finetune'][1]:.1f} | "
        f"{runs['finetune'][2]:.1f} | {runs['finetune'][3]:.0f} | "
        f"{max(tuned['head_only_val_accuracy'], tuned['finetuned_val_accuracy']):.4f} | "
        f"{result['final_test']:.4f} |"]


def _merged(config: dict, overrides: dict) -> dict:
    """config with the sections of overrides merged in (one level deep)."""
    return {**config, **{section: {**config.get(section, {}), **values}
                         for section, values in overrides.items()}}


def benchmark(name: str, source: str, config: dict, work: str,
              variants: list[tuple[str, dict]]) -> list[str]:
    """One section of RESULTS.md: the frozen pass, the tutorial, each tlpipe variant (label,
    config overrides; the first is the default) and the linear probe on one dataset."""
    from components.core.config.schema import PipelineConfig
    from components.core.data import ingest as ingestion

    dataset_dir = os.path.join(work, name, "dataset")
    manifest = ingestion.ingest_folder(source, dataset_dir, PipelineConfig.from_dict(config).data)
    counts = {split: sum(c.values()) for split, c in manifest["counts"].items()}
    print(f"[{name}] split {counts}", flush=True)
    frozen_wall, _, _, frozen_mb = in_child(frozen_pass, dataset_dir, config)
    print(f"[{name}] frozen pass {frozen_wall:.1f} s", flush=True)
    tutorial_stages, _, _, tutorial_mb = in_child(tutorial, dataset_dir, config)
    print(f"[{name}] tutorial {tutorial_stages}", flush=True)
    results = {label: run_tlpipe(name, label, _merged(config, overrides), dataset_dir, work)
               for label, overrides in variants}
    default = results[variants[0][0]]
    probe = in_child(linear_probe, default["paths"]["features"], default["paths"]["backbone"],
                     default["paths"]["images"], config)[0]
    tut_head, tut_tune = tutorial_stages["head"], tutorial_stages["finetune"]
    lines = [
        f"### {name}: {counts['train']} train / {counts['val']} val / {counts['test']} test "
        f"images, {len(manifest['classes'])} classes",
        "",
        "| recipe | stage | wall s | CPU s | peak RSS MB | val acc | test acc |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| frozen backbone | one pass over train (decode + resize + forward; median of 3) | "
        f"{frozen_wall:.1f} | | {frozen_mb:.0f} | | |",
        f"| tutorial | head ({TUTORIAL_EPOCHS} epochs, backbone every epoch) | "
        f"{tut_head['wall']:.1f} | {tut_head['cpu']:.1f} | {tutorial_mb:.0f} | "
        f"{tut_head['val']:.4f} | {tut_head['test']:.4f} |",
        f"| tutorial | fine-tune top third ({TUTORIAL_EPOCHS} epochs, RMSprop 1e-5) | "
        f"{tut_tune['wall']:.1f} | {tut_tune['cpu']:.1f} | {tutorial_mb:.0f} | "
        f"{tut_tune['val']:.4f} | {tut_tune['test']:.4f} |",
        *[row for label, result in results.items() for row in tlpipe_rows(label, result)],
        f"| linear probe | logistic regression on frozen features, C={probe['C']:g} | | | | "
        f"{probe['val']:.4f} | {probe['test']:.4f} |",
        "",
    ]
    for label, result in results.items():
        lines += [
            f"- {label}: head stage / one frozen pass **"
            f"{result['head_wall'] / frozen_wall:.2f}x** (goal: at most 3x); tutorial head stage "
            f"/ tlpipe head stage **{tut_head['wall'] / result['head_wall']:.2f}x** (goal: at "
            f"least 5x); final test accuracy {result['final_test']:.4f} vs linear probe "
            f"{probe['test']:.4f}; fine-tuning: {result['runs']['finetune'][0]['reason']}"]
    return lines + [""]


def write_results(lines: list[str], path: str) -> None:
    """Writes the Markdown result lines to `path` and prints them."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


DEFAULT_RUNS = ("hymenoptera:160", "hymenoptera:384", "digits:160")
VARIANTS = [("tlpipe (default)", {}), ("tlpipe, augment.views=8", {"augment": {"views": 8}}),
            ("tlpipe, model.mirror_average", {"model": {"mirror_average": True}})]
MIRRORING_CHANGES_THE_CLASS = ("digits",)  # no mirror-averaged variant for these


def run_spec(text: str) -> tuple[str, int]:
    """'NAME:SIZE' -> (dataset name, image side in px), for --run."""
    name, _, size = text.partition(":")
    if name not in ("hymenoptera", "digits") or not size.isdigit() or int(size) < 32:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use hymenoptera:SIZE or digits:SIZE with SIZE >= 32 (pixels)")
    return name, int(size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(
        SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5"),
        help="MobileNet v1 alpha 0.25 ImageNet weights file (default: ../shared's)")
    parser.add_argument("--hymenoptera", default=os.path.join(
        SHARED, "data", "hymenoptera_data"), help="the ants/bees folder (default: ../shared's)")
    parser.add_argument("--run", action="append", type=run_spec, metavar="NAME:SIZE",
                        help="a dataset (hymenoptera or digits) and the image side the backbone "
                             "sees, in px; repeat for more (default: "
                             f"{' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    runs = args.run or [run_spec(text) for text in DEFAULT_RUNS]
    from pipelines.demo import write_digits

    lines = [
        "# Transfer-learning benchmark: tutorial recipe vs tlpipe",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Run {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; MobileNet v1 alpha 0.25, ImageNet weights from the file, "
        f"tlpipe default config. In each section both recipes use the same ingest split and "
        f"image size (the given val/ folder of hymenoptera is the test split).",
        "",
    ]
    with tempfile.TemporaryDirectory() as work:
        sources = {"hymenoptera": args.hymenoptera,
                   "digits": write_digits(os.path.join(work, "digits-source"))}
        for name, size in runs:
            config = {"model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": size,
                                "weights": os.path.abspath(args.weights)}}
            variants = [(label, overrides) for label, overrides in VARIANTS
                        if not (name in MIRRORING_CHANGES_THE_CLASS and "model" in overrides)]
            lines += benchmark(f"{name}-{size}px", sources[name], config, work, variants)
    write_results(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
