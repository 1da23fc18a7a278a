"""One function per pipeline step, on plain paths and a config dict.

The KFP components in `components/steps.py` only map their artifacts to these paths and copy the
returned metadata onto the artifacts. Each stage validates the config before doing any work and
writes its outputs atomically.

Artifact layouts (directories):
    dataset   manifest.json + <split>-NNNNN.tfrecord          (ingestion.ingest_folder)
    images    meta.json + <split>.tfrecord resized pixels       (cache.write_resized)
    features  meta.json + features.npz                          (cache.FeatureCache)
    backbone  backbone.keras + provenance.json
    head      head.keras + history.json
    model     model.keras + finetune.json + labels.txt
    evaluation evaluation.json (metrics, intervals, blessing, provenance, curves, thumbnails)
    tflite    saved_model/ + model_<variant>.tflite + quantization.json + labels.txt
    onnx      model.onnx + model_<fp16|int8>.onnx [+ model.engine] + tensorrt.json + labels.txt
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
import tempfile

from components.core.cluster import distribute, launch, local as local_workers
from components.core.cluster.distribution import Distribution
from components.core.config import backbones, schema as configs
from components.core.data import (cache, discovery, ingest as ingestion, local_folder, shards,
                                  sources)
from components.core.errors import ConfigError
from components.core.evaluate import predict
from components.core.evaluate.baseline import load_baseline
from components.core.export.calibration import calibration_images
from components.core.io import storage
from components.core.registry import champion, models as registry_models
from components.core.registry.store import open_store
from components.core.train import backup, recipe, search

log = logging.getLogger("tlpipe.stages")

# A folder named by this variable (local runs set it) gets each step's log, <step>.log, and,
# when the step fails, <step>.error.json: {"step", "type", "message"} for a one-line report.
STEP_RECORDS_ENV = "TLPIPE_STEP_RECORDS"


def _stage(step: str):
    """Decorates the stage of pipeline step `step`: configures logging for the step process
    (also into the step records folder, if any), validates the config sections it received
    first (those alone: `step_config`), records a failure with its message before re-raising
    it, and records the process's peak memory (`peak_memory`) in <records>/<step>.memory.json
    when it ends."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            records = _log_to_records(step)
            try:
                if isinstance(kwargs.get("config"), dict):
                    kwargs["config"] = step_config(kwargs["config"])
                return function(*args, **kwargs)
            except Exception as error:
                if records:
                    log.exception("step %s failed", step)
                    storage.write_json(os.path.join(records, f"{step}.error.json"), {
                        "step": step, "type": type(error).__name__, "message": str(error)})
                raise
            finally:
                if records:
                    storage.write_json(os.path.join(records, f"{step}.memory.json"),
                                       peak_memory())

        return wrapper

    return decorate


def step_config(received: dict) -> configs.PipelineConfig:
    """The config of a step that received the sections in `received` ({section: values}):
    those sections checked alone (`PipelineConfig.validate(sections)`), defaults elsewhere."""
    return configs.PipelineConfig.from_dict(received).validate(sections=received)


def peak_memory() -> dict:
    """This process's peak resident memory and the largest of its ended child processes' (the
    kernel's high-water marks, exact where sampling would miss a short peak), in MB:
    {"process_mb", "largest_child_mb"}. The two do not add up: a forked child counts the
    pages it shares with this process (importing TensorFlow forks one of ~430 MB here)."""
    import resource

    def megabytes(who: int) -> float:  # ru_maxrss is in KiB on Linux
        return round(resource.getrusage(who).ru_maxrss / 1024, 1)

    return {"process_mb": megabytes(resource.RUSAGE_SELF),
            "largest_child_mb": megabytes(resource.RUSAGE_CHILDREN)}


def _log_to_records(step: str) -> str:
    """Logs INFO and up to stdout and, when $TLPIPE_STEP_RECORDS names a folder, also to
    <folder>/<step>.log (appended). Returns that folder, or ""."""
    records = os.environ.get(STEP_RECORDS_ENV, "")
    handlers = [logging.StreamHandler(sys.stdout)]
    if records:
        os.makedirs(records, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(records, f"{step}.log"),
                                            encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return records


@_stage("fingerprint")
def fingerprint(source: str) -> str:
    """What the source holds now (see sources.fingerprint); checks it can be read."""
    return sources.fingerprint(source)


@_stage("ingest")
def ingest(source: str, dataset_dir: str, report_path: str, *, config) -> dict:
    """Source URI (folder, gs:// prefix, archive, TFDS) -> dataset artifact, committed only if
    the source did not change while it was read, and its validation report (Markdown).
    Returns artifact metadata."""
    from components.core.data import report as data_report

    before = sources.fingerprint(source)
    with tempfile.TemporaryDirectory(prefix="tlpipe-source-") as workdir, \
            storage.atomic_dir(dataset_dir) as partial:
        with local_folder.local_names(sources.materialized_folder(workdir), source):
            folder = sources.materialize(source, workdir)
            manifest = ingestion.ingest_folder(folder, partial, config.data, source=source)
        if sources.fingerprint(source) != before:
            raise discovery.DataError(f"{source} changed while it was read; nothing was written: "
                                      f"run again once it is stable")
    storage.write_text(report_path, data_report.render_data_report(manifest))
    return {"classes": manifest["classes"], "fingerprint": manifest["fingerprint"],
            "imbalance_ratio": manifest["imbalance_ratio"],
            "excluded_from_test": len(manifest["excluded_from_test"]),
            "label_conflicts": len(manifest["label_conflicts"]),
            "counts": {split: sum(c.values()) for split, c in manifest["counts"].items()},
            "skipped": len(manifest["skipped"]), "converted": len(manifest["converted"])}


@_stage("preprocess")
def preprocess(dataset_dir: str, images_dir: str, features_dir: str, backbone_dir: str, *,
               config) -> dict:
    """Resizes once, builds the backbone with its weights, caches frozen features. Decoding
    runs in the background while the backbone is built, saved and traced; features of train
    and val come from the same pass that writes the resized images."""
    import keras

    from components.core.train import model as models

    for message in config.model.weights_problems():  # the one step that reads the file
        raise ConfigError(message)
    spec = backbones.get(config.model.backbone)
    size = backbones.resolved_size(spec, config.model.image_size)
    batches = cache.start_resizing(dataset_dir, size)
    keras.utils.set_random_seed(config.data.seed)  # random weights, when used, from the seed
    backbone, provenance = models.load_backbone(config.model)
    if provenance["weights"] == "random":
        models.calibrate_batchnorm(backbone, spec.preprocess_mode, size,
                                   cache.batchnorm_sample(dataset_dir, size, config.data.seed))
        provenance["detail"] += "; BatchNorm statistics estimated from training images"
    train_counts = storage.read_json(os.path.join(dataset_dir, "manifest.json"))["counts"][
        "train"]
    features = cache.FeatureCache(
        models.attach(backbone, spec.preprocess_mode, size,
                      mirror_average=config.model.mirror_average),
        size, config.augment, config.data.seed,
        recipe.crop_scale(config.augment.min_crop_scale, list(train_counts.values())))
    provenance["parameters"] = backbone.count_params()
    with storage.atomic_dir(backbone_dir) as partial:
        models.save(backbone, os.path.join(partial, "backbone.keras"))
        storage.write_json(os.path.join(partial, "provenance.json"), provenance)
    meta = cache.write_resized(batches, dataset_dir, images_dir, size, on_batch=features.add)
    features.add_views(images_dir)
    facts = features.save(features_dir, classes=meta["classes"])
    return {"image_size": size, "classes": meta["classes"], "weights": provenance["weights"],
            "weights_detail": provenance["detail"], **facts}


@_stage("train-head")
def train_head(features_dir: str, head_dir: str, *, config) -> dict:
    """Trains the head on cached features. Returns val metrics of the best epoch."""
    from components.core.train import head as head_training, model as models

    classes = storage.read_json(os.path.join(features_dir, cache.META))["classes"]
    features = cache.load_features(features_dir)
    with storage.atomic_dir(head_dir) as partial:
        head, report = head_training.train_head(
            features, len(classes), config.head, config.loss, config.model.dropout,
            log_dir=os.path.join(partial, "tensorboard"), overwrite_features=True)
        models.save(head, os.path.join(partial, "head.keras"))
        storage.write_json(os.path.join(partial, "history.json"), report)
    return {name: report[name] for name in ("l2", "val_loss", "val_accuracy", "steps_run")}


@_stage("finetune")
def finetune(images_dir: str, backbone_dir: str, head_dir: str, model_dir: str, *,
             config, backup_root: str = "") -> dict:
    """Fine-tunes under MultiWorkerMirroredStrategy when TF_CONFIG names a cluster (without it,
    this process alone: see `distribute.make_strategy`); keeps the better of head-only and
    fine-tuned by val. Only the chief writes the model; other workers write to a temporary
    place that is removed.
    backup_root: where every worker keeps its backup (local path or gs://; "" for none), so
    a restarted job resumes from the last completed epoch."""
    from components.core.train import finetune as finetuning, model as models

    strategy = distribute.make_strategy()
    task_type, task_index = distribute.task()
    log.info("%s %s-%d of %d workers", distribute.READY, task_type, task_index,
             distribute.worker_count())
    meta = storage.read_json(os.path.join(images_dir, cache.META))
    provenance = storage.read_json(os.path.join(backbone_dir, "provenance.json"))
    plan = recipe.resolve(config.finetune, config.augment, config.loss,
                          meta["train_class_counts"], provenance["parameters"],
                          backbones.get(config.model.backbone).unfreeze_fraction)
    config = recipe.applied(config, plan)
    chief = distribute.is_chief()
    target = model_dir if chief else tempfile.mkdtemp(prefix="tlpipe-worker-")
    try:
        with storage.atomic_dir(target) as partial:
            classifier, report = finetuning.fine_tune(
                os.path.join(backbone_dir, "backbone.keras"),
                os.path.join(head_dir, "head.keras"),
                shards.training_epochs(strategy, images_dir, config.finetune.batch_size,
                                       config.data.seed, config.augment,
                                       distribute.worker_count()),
                cache.read_resized(images_dir, "val").batch(config.finetune.batch_size),
                config.model, config.finetune, config.loss, config.data.seed, strategy,
                meta["train_class_counts"],
                pretrained=provenance["weights"] != "random",
                log_dir=os.path.join(partial, "tensorboard"),
                backup_dir=backup.worker_dir(backup_root, task_type, task_index)
                if backup_root else None)
            report["recipe"] = {**dataclasses.asdict(plan), "weight_decay":
                                config.finetune.weight_decay,
                                "selection": config.finetune.selection,
                                "label_smoothing": config.loss.label_smoothing}
            report["workers"] = distribute.worker_count()
            models.save(classifier, os.path.join(partial, "model.keras"))
            storage.write_json(os.path.join(partial, "finetune.json"), report)
            predict.write_labels(partial, meta["classes"])
    finally:
        if not chief:
            shutil.rmtree(target, ignore_errors=True)
    return _finetune_facts(report, distribute.worker_count())


def _finetune_facts(report: dict, workers: int) -> dict:
    """The fine-tune step's metadata from its finetune.json report."""
    return {"mode": report["mode"], "chosen": report["chosen"], "reason": report["reason"],
            "head_only_val_accuracy": report["head_only_val"]["accuracy"],
            "finetuned_val_accuracy": (report["finetuned_val"] or {}).get("accuracy", -1.0),
            "trained_layers": len(report["trained_layers"]),
            "resumed_from_epoch": report["resumed_from_epoch"],
            "finetuned_weights_sha256": report.get("finetuned_weights_sha256", ""),
            "workers": workers}


# The config sections a fine-tuning worker uses (and all it receives).
WORKER_SECTIONS = ("data", "model", "augment", "loss", "finetune")


def worker_config_json(config: configs.PipelineConfig) -> str:
    """The WORKER_SECTIONS of `config` as the JSON a worker's --config takes."""
    values = config.to_dict()
    return json.dumps({name: values[name] for name in WORKER_SECTIONS})


@_stage("finetune")
def finetune_step(images_dir: str, backbone_dir: str, head_dir: str, model_dir: str, *,
                  config, distribution: dict, uris: dict | None = None,
                  trial: dict | None = None) -> dict:
    """The fine-tune pipeline step. distribution: the `Distribution` contract in its
    `to_dict` form, read here once. One worker: `finetune` in this process. Otherwise this
    process launches the workers (local processes beside it, or a TrainJob or TFJob on the
    cluster, whose pods read the artifacts at `uris` {"images", "backbone", "head", "model"}),
    restarts the group after a lost worker up to `restarts` times (it resumes from the
    backups), and returns the chief's figures plus "restarts" used.
    trial: this task's finetune overrides when the pipeline was compiled with a search (one
    task per trial, see `train.search`)."""
    if trial:
        config = config.with_overrides({"finetune": {**trial, "search": {}}}).validate(
            sections=["finetune"])
    elif search.trials(config.finetune.search):
        raise ConfigError("finetune.search is set but this pipeline was compiled without it; "
                          "compile (or submit, schedule) with the same config so that each "
                          "trial is a task of its own")
    contract = Distribution.from_dict(distribution)
    train_images = sum(storage.read_json(os.path.join(images_dir, cache.META))[
        "train_class_counts"])
    config.finetune.check_batch_fits(train_images, "the training split")
    workers = contract.workers
    if workers <= 1:
        if distribute.train_alone():
            log.warning("finetune: ignoring the TF_CONFIG in this step's environment: it trains "
                        "alone (one worker); more workers come from the settings' "
                        "steps.finetune.workers")
        return finetune(images_dir, backbone_dir, head_dir, model_dir, config=config)

    if contract.runs_a_cluster_job:
        restarts = launch.fine_tune(contract, uris, worker_config_json(config), model_dir)
    else:
        backup_root = f"{model_dir}.backups"
        command = distribute.worker_command(images_dir, backbone_dir, head_dir, model_dir,
                                            worker_config_json(config), backup_root)
        try:
            restarts = local_workers.launch_with_restarts(lambda: local_workers.launch_local(
                command, workers, timeout_seconds=contract.timeout_seconds,
                start_timeout_seconds=contract.start_timeout_seconds),
                contract.restarts, log.warning)
        finally:  # this run's backups: no later run resumes from them
            shutil.rmtree(backup_root, ignore_errors=True)
    report = storage.read_json(os.path.join(model_dir, "finetune.json"))
    return {**_finetune_facts(report, workers), "restarts": restarts}


@_stage("pick-trial")
def pick_trial(trial_dirs: list[str], model_dir: str, table_path: str) -> dict:
    """The search's fan-in: copies the trial model (a fine-tune step's `model` folder) whose
    shipped model has the lowest val loss (`search.best`) to `model_dir`, its finetune.json
    completed with "search" (every trial's figures), and writes the trials as a Markdown table
    to `table_path`. Returns the picked trial's fine-tune facts plus "trial" and "trials"."""
    reports = [storage.read_json(os.path.join(folder, "finetune.json")) for folder in trial_dirs]
    picked = search.best(reports)
    rows = [{"trial": search.label(report["recipe"]), "chosen": report["chosen"],
             "val_loss": search.shipped_val(report)["loss"],
             "val_accuracy": search.shipped_val(report)["accuracy"],
             "picked": index == picked} for index, report in enumerate(reports)]
    with storage.atomic_dir(model_dir) as partial:
        shutil.copytree(trial_dirs[picked], partial, dirs_exist_ok=True)
        storage.write_json(os.path.join(partial, "finetune.json"),
                           {**reports[picked], "search": rows})
    lines = ["| trial | val loss | val accuracy | shipped model | picked |",
             "|---|---|---|---|---|",
             *[f"| {row['trial']} | {row['val_loss']:.4f} | {row['val_accuracy']:.4f} "
               f"| {row['chosen']} | {'yes' if row['picked'] else ''} |" for row in rows]]
    storage.write_text(table_path, "# Fine-tuning search\n\nThe trial with the lowest val loss "
                       "is shipped.\n\n" + "\n".join(lines) + "\n")
    log.info("search: picked %s of %d trials", rows[picked]["trial"], len(rows))
    return {**_finetune_facts(reports[picked], reports[picked]["workers"]),
            "trial": rows[picked]["trial"], "trials": len(rows)}


@_stage("evaluate")
def evaluate(model_dir: str, images_dir: str, dataset_dir: str, backbone_dir: str,
             head_dir: str, evaluation_dir: str, report_path: str, card_path: str, *,
             config, registry: dict | None = None) -> dict:
    """Test-split metrics with bootstrap intervals, the blessing decision (absolute rules and a
    baseline on the same images: evaluate.baseline_model if given, else the model registry's
    production version, see `champion`), and the evaluation record, HTML report and model
    card. Returns the evaluation record without thumbnails, plus "exportable": whether the
    model is exported (blessed; against a registry's production model, the absolute rules
    alone: a model that does not beat production is still exported, as a candidate)."""
    from components.core.evaluate import blessing, report

    judge, registry = config.evaluate, registry or {}
    meta = storage.read_json(os.path.join(images_dir, cache.META))
    classes = meta["classes"]
    images = cache.SplitImages(images_dir, "test")  # read in batches, never held whole
    labels = images.labels
    challenging = bool(registry.get("root")) and not judge.baseline_model
    defending = champion.production(registry) if challenging else None
    if judge.baseline_model:
        baseline = _baseline_figures(judge.baseline_model, classes, images, labels)
    elif defending and champion.comparable(defending, classes):
        baseline = {**_baseline_figures(defending["uri"], classes, images, labels),
                    "version": defending["version"]}
    else:
        baseline = None
    judged = blessing.judge(labels, _probabilities(model_dir, images), images, classes, judge,
                            config.data.seed, baseline)
    if challenging:
        judged["champion"] = champion.verdict(registry, defending, classes, judged)
        log.info("champion/challenger: %s", judged["champion"]["text"])
    log.info("test accuracy %.4f on %d images; %s", judged["metrics"]["accuracy"], len(labels),
             judged["blessing_reason"])
    provenance = storage.read_json(os.path.join(backbone_dir, "provenance.json"))
    record = {
        "classes": classes, **judged,
        "data": storage.read_json(os.path.join(dataset_dir, "manifest.json")),
        "model": {"backbone": config.model.backbone, "image_size": meta["image_size"],
                  **provenance},
        "training": {"head": storage.read_json(os.path.join(head_dir, "history.json")),
                     "finetune": storage.read_json(os.path.join(model_dir, "finetune.json"))},
        "exports": None}
    with storage.atomic_dir(evaluation_dir) as partial:
        storage.write_json(os.path.join(partial, report.EVALUATION), record)
    _write_report(record, report_path, card_path)
    return {**{key: value for key, value in record.items() if key != "wrong"},
            "exportable": judged["shippable"] if challenging else judged["blessed"]}


def _probabilities(model_dir: str, images):
    """The shipped model's class probabilities (N, C) for uint8 `images` (N, H, W, 3)."""
    from components.core.train import model as models

    return _predict(models.load(os.path.join(model_dir, "model.keras")), images)


def _predict(model, images):
    """A Keras model's probabilities (N, C) for `images` (an array or a cache.SplitImages),
    read and classified a batch at a time."""
    from components.core.export import measure

    return measure.in_batches(lambda batch: model.predict(batch, batch_size=64, verbose=0),
                              images)


def _baseline_figures(uri: str, classes: list[str], images, labels) -> dict:
    """{"uri", "metrics"} of the baseline model at `uri` on the same test images."""
    from components.core.evaluate import metrics as evaluation

    return {"uri": uri, "metrics": evaluation.classification_metrics(
        labels, _predict(load_baseline(uri, classes), images), classes)}


@_stage("promote")
def promote(model_dir: str, evaluation_dir: str, tflite_dir: str, onnx_dir: str,
            images_dir: str, card_path: str, verdict_path: str, *, config, registry: dict,
            run: dict) -> dict:
    """Registers the exported model as the next version of registry["model"] (the Keras model,
    the SavedModel, the accepted TFLite/ONNX/TensorRT files with their gate results, the
    evaluation, the model card, the data fingerprint and source, the config, `run`: the KFP
    run's names) and moves production to it when `champion.decide` says so (a production that
    moved meanwhile is scored again on this run's test split). Writes the verdict as Markdown
    to `verdict_path`; returns {"version", "promoted", "reason", "production"}, or
    {"version": 0, "promoted": False, "reason"} without a registry."""
    from components import __version__
    from components.core.evaluate import blessing

    if not registry.get("root"):
        reason = ("no model registry: set model_registry.root in the settings (or pass "
                  "--registry) to keep versions and a production model")
        storage.write_text(verdict_path, f"# Promotion\n\nSkipped: {reason}.\n")
        return {"version": 0, "promoted": False, "reason": reason, "production": None}
    store = open_store(registry["root"])
    name = registry_models.check_model_name(registry["model"])
    record = storage.read_json(os.path.join(evaluation_dir, "evaluation.json"))
    with tempfile.TemporaryDirectory(prefix="tlpipe-version-") as folder:
        files = _version_files(model_dir, tflite_dir, onnx_dir, card_path, folder)
        storage.write_json(os.path.join(folder, "config.json"), config.to_dict())
        shutil.copyfile(os.path.join(evaluation_dir, "evaluation.json"),
                        os.path.join(folder, "evaluation.json"))
        number = registry_models.register(store, name, folder, {
            "classes": record["classes"], "test_accuracy": record["metrics"]["accuracy"],
            "macro_f1": record["metrics"]["macro_f1"],
            "test_examples": record["metrics"]["examples"], "blessed": record["blessed"],
            "blessing_reason": record["blessing_reason"], "champion": record.get("champion"),
            "data": {key: record["data"].get(key) for key in ("fingerprint", "source",
                                                             "counts")},
            "backbone": record["model"]["backbone"], "run": run, "tlpipe": __version__,
            "files": sorted(files + ["config.json", "evaluation.json"])})
    by = run.get("name") or "a pipeline run"
    registry_models.log_event(store, name, number, "registered", record["blessing_reason"], by)

    def rescore(current: int) -> tuple[bool, str]:
        defending = champion.production(registry, current)
        if not champion.comparable(defending, record["classes"]):
            return False, f"production version {current} classifies other classes"
        images = cache.SplitImages(images_dir, "test")
        baseline = _baseline_figures(defending["uri"], record["classes"], images,
                                     images.labels)["metrics"]
        blessed, checks = blessing.bless(record["metrics"], config.evaluate, baseline)
        return blessed, champion.against(blessed, checks)

    outcome = registry_models.promote_candidate(
        store, name, number, lambda current: champion.decide(record, registry, current,
                                                             rescore), by)
    verdict = (f"version {number} of {name} " + ("is now in production" if outcome["promoted"]
               else f"is a candidate; production stays version {outcome['production']}"))
    log.info("%s: %s", verdict, outcome["reason"])
    storage.write_text(verdict_path, f"# Promotion\n\n**{verdict[0].upper()}{verdict[1:]}**"
                       f"\n\nWhy: {outcome['reason']}\n\nRegistry: `{registry['root']}`\n")
    return {"version": number, **outcome}


def _version_files(model_dir: str, tflite_dir: str, onnx_dir: str, card_path: str,
                   folder: str) -> list[str]:
    """Copies what a registry version ships into `folder`: model.keras, labels.txt,
    finetune.json, the SavedModel, every TFLite and ONNX file the gate accepted with the gate
    results (quantization.json, tensorrt.json), a built TensorRT engine, the model card.
    Returns the names copied (the SavedModel as "saved_model/")."""
    copied = []

    def copy(source_dir: str, name: str, as_name: str = "") -> None:
        source = os.path.join(source_dir, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(folder, name))
            copied.append(name + "/")
        elif os.path.isfile(source):
            shutil.copyfile(source, os.path.join(folder, as_name or name))
            copied.append(as_name or name)

    for name in ("model.keras", "labels.txt", "finetune.json"):
        copy(model_dir, name)
    quantized = storage.read_json(os.path.join(tflite_dir, "quantization.json"))
    copy(tflite_dir, "saved_model")
    copy(tflite_dir, "quantization.json")
    for figures in quantized["variants"].values():
        if figures.get("status") != "rejected":
            copy(tflite_dir, figures["file"])
    converted = storage.read_json(os.path.join(onnx_dir, "tensorrt.json"))
    copy(onnx_dir, "tensorrt.json")
    for figures in converted.values():
        if isinstance(figures, dict) and figures.get("file") and figures.get(
                "status") == "accepted":
            copy(onnx_dir, figures["file"])
    if converted["tensorrt"]["status"] == "built":
        copy(onnx_dir, "model.engine")
    copy(os.path.dirname(card_path), os.path.basename(card_path), "model_card.md")
    return copied


@_stage("report")
def report(evaluation_dir: str, tflite_dir: str, onnx_dir: str, report_path: str,
           card_path: str) -> dict:
    """The evaluate step's report and model card, completed with every exported format."""
    from components.core.evaluate import report

    record = report.read_evaluation(evaluation_dir, tflite_dir, onnx_dir)
    _write_report(record, report_path, card_path)
    return {"formats": len(record["exports"]["tflite"]) + 2,
            "recommended": record["exports"]["recommended"]}


def _write_report(record: dict, report_path: str, card_path: str) -> None:
    from components.core.evaluate import card, report

    storage.write_text(report_path, report.render_html(record))
    storage.write_text(card_path, card.render_model_card(record))


@_stage("quantize")
def quantize(model_dir: str, images_dir: str, tflite_dir: str, *, config) -> dict:
    """SavedModel, a float32 TFLite reference and the configured quantized TFLite variants, each
    evaluated on the test split and gated against the float model; names the recommended
    variant (`measure.recommend` by export.recommend) and why."""
    from components.core.export import measure, tflite
    from components.core.train import model as models, scoring

    shipping = config.export
    model = models.load(os.path.join(model_dir, "model.keras"))
    test_images = cache.SplitImages(images_dir, "test")  # read in batches, never held whole
    test_labels = test_images.labels
    calibration = calibration_images(images_dir, config.export.calibration_samples,
                                     config.data.seed)
    reference = _predict(model, test_images)
    float_accuracy = measure.accuracy(reference, test_labels)
    compiled = scoring.inference(model)  # as served: a graph, not eager calls
    _, keras_latency = measure.timed(lambda image: compiled(image[None])[0].numpy(),
                                     test_images[:measure.KERAS_TIMED_IMAGES])
    with storage.atomic_dir(tflite_dir) as partial:
        saved_model = os.path.join(partial, "saved_model")
        tflite.export_saved_model(model, saved_model)
        variants = tflite.write_variants(model, saved_model, partial, shipping, calibration,
                                         (test_images, test_labels, reference))
        measure.gate(float_accuracy, variants, shipping.max_accuracy_drop,
                     shipping.min_agreement)
        recommended, why = measure.recommend(variants, shipping.recommend, "float32",
                                             shipping.max_slowdown)
        for variant, figures in variants.items():
            log.info("tflite %s: %s", variant, figures)
        facts = {"float_test_accuracy": float_accuracy,
                 "saved_model_size_bytes": storage.tree_size(saved_model),
                 "keras_latency": measure.latency_summary(keras_latency),
                 "calibration_images": len(calibration), "int8_input": shipping.int8_input,
                 "max_accuracy_drop_points": shipping.max_accuracy_drop,
                 "min_agreement": shipping.min_agreement, "recommended": recommended,
                 "recommended_reason": why, "recommended_file": variants[recommended]["file"],
                 "variants": variants}
        log.info("recommended TFLite variant: %s, %s", recommended, why)
        storage.write_json(os.path.join(partial, "quantization.json"), facts)
        predict.write_labels(partial, _classes(images_dir))
    return facts


@_stage("tensorrt")
def tensorrt(model_dir: str, images_dir: str, onnx_dir: str, *, config) -> dict:
    """ONNX export (export.onnx_opset) and its reduced-precision variants (export.onnx_variants:
    FP16, INT8 by Q/DQ calibrated on the quantize step's calibration images), each evaluated on
    the test split with ONNX Runtime and gated like the TFLite variants; a TensorRT engine built
    from the export.tensorrt_precision one where TensorRT and a GPU exist and that variant was
    accepted, otherwise status "skipped" with the reason."""
    from components.core.export import measure, onnx as onnx_export, tensorrt as tensorrt_engine
    from components.core.train import model as models

    shipping = config.export
    model = models.load(os.path.join(model_dir, "model.keras"))
    images = cache.SplitImages(images_dir, "test")  # read in batches, never held whole
    labels = images.labels
    meta = storage.read_json(os.path.join(images_dir, cache.META))
    reference = _predict(model, images)  # also builds the loaded model
    calibration = (calibration_images(images_dir, shipping.calibration_samples,
                                      config.data.seed)
                   if "int8" in shipping.onnx_variants else None)
    with storage.atomic_dir(onnx_dir) as partial:
        files = onnx_export.write_formats(model, partial, shipping.onnx_opset,
                                          shipping.onnx_variants, calibration)
        formats = {name: measure.runtime_figures(onnx_export.onnx_classifier(path), images,
                                                 labels, reference, file=os.path.basename(path),
                                                 size_bytes=os.path.getsize(path))
                   for name, path in files.items()}
        float_size = formats["onnx"]["size_bytes"]
        for name in files.keys() - {"onnx"}:  # how many times smaller than the float ONNX
            formats[name]["size_ratio"] = float_size / formats[name]["size_bytes"]
        float_accuracy = measure.accuracy(reference, labels)
        measure.gate(float_accuracy, formats, shipping.max_accuracy_drop,
                     shipping.min_agreement)
        recommended, why = measure.recommend(formats, shipping.recommend, "onnx",
                                             shipping.max_slowdown)
        if calibration is not None:
            formats["onnx_int8"]["calibration_images"] = len(calibration)
        for name, figures in formats.items():
            log.info("%s: %s", name, figures)
        facts = {**formats, "float_test_accuracy": float_accuracy,
                 "max_accuracy_drop_points": shipping.max_accuracy_drop,
                 "min_agreement": shipping.min_agreement, "recommended_onnx": recommended,
                 "recommended_onnx_reason": why,
                 "opset": shipping.onnx_opset,
                 "tensorrt": tensorrt_engine.engine_figures(
                     files, formats, shipping.tensorrt_precision, meta["image_size"],
                     (images, labels, reference), partial)}
        storage.write_json(os.path.join(partial, "tensorrt.json"), facts)
        predict.write_labels(partial, meta["classes"])
    return facts


def _classes(images_dir: str) -> list[str]:
    return storage.read_json(os.path.join(images_dir, cache.META))["classes"]


