"""What each `tlpipe` command does (the argument grammar is pipelines.cli): run the pipeline
locally and report, the demo, compile, submit and schedule on a cluster, publish a run's report,
classify images, list backbones. Each handler takes the parsed arguments and returns the exit
code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from components.core.config import backbones, schema as configs
from components.core.data import discovery, ingest as ingestion, sources
from components.core.errors import ConfigError, InputError, StepError
from components.core.io.console import import_tensorflow_quietly

# Flags that override one config field: flag -> (section, field, type, help).
OVERRIDES = {
    "--backbone": ("model", "backbone", str, "backbone name (see `tlpipe backbones`)"),
    "--alpha": ("model", "alpha", float, "width multiplier (MobileNet family)"),
    "--image-size": ("model", "image_size", int, "input side in pixels (default: backbone's)"),
    "--weights": ("model", "weights", str, "imagenet, none, a weights file or a gs:// URI"),
    "--seed": ("data", "seed", int, "split and training seed"),
    "--head-steps": ("head", "max_steps", int, "maximum full-batch head training steps"),
    "--finetune-epochs": ("finetune", "epochs", int,
                          "fine-tune epochs (0: none, the head-only model; default: chosen "
                          "from the training set's size)"),
    "--unfreeze-layers": ("finetune", "unfreeze_layers", int,
                          "backbone layers to fine-tune from the top (default: a share chosen "
                          "from the data and the backbone's size)"),
    "--min-accuracy": ("evaluate", "min_accuracy", float,
                       "test accuracy needed to bless and export the model"),
    "--baseline": ("evaluate", "baseline_model", str,
                   "model in production to compare with: an earlier run's model.keras (local or "
                   "gs://); bless only if not worse by more than evaluate.baseline_margin"),
    "--max-accuracy-drop": ("export", "max_accuracy_drop", float,
                            "percentage points a quantized model may lose against the float "
                            "model before it is rejected (default: 1)"),
    "--tensorrt-precision": ("export", "tensorrt_precision", str,
                             "fp32, fp16 or int8 (calibrated) for the TensorRT engine"),
}

# `tlpipe run` plans a local folder's splits before the pipeline (reading every file once)
# when it has at most this many files, or when fine-tuning's batch is near its size.
PREVIEW_MAX_FILES = 5000


def build_config(args: argparse.Namespace) -> configs.PipelineConfig:
    """Preset, then the --config file, then flags; validated."""
    config = configs.preset(args.preset)
    if args.config:
        config = configs.load_yaml(args.config, config)
    overrides: dict = {}
    for flag, (section, field, _, _) in OVERRIDES.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides.setdefault(section, {})[field] = value
    config = config.with_overrides(overrides).preflight()
    if os.path.isfile(config.model.weights):  # steps may run in another working directory
        config.model.weights = os.path.abspath(config.model.weights)
    baseline = config.evaluate.baseline_model
    if baseline and not baseline.startswith("gs://"):
        if not (os.path.isfile(baseline) and baseline.endswith(".keras")):
            raise ConfigError(f"baseline model {baseline} is not a .keras file; give the "
                              f"model/model.keras of an earlier run")
        config.evaluate.baseline_model = os.path.abspath(baseline)
    return config


def run(args: argparse.Namespace) -> int:
    """`tlpipe run`: the pipeline on this machine, then its summary and report."""
    from pipelines import settings

    deployment = _settings(args)
    if args.workers is not None:
        deployment = settings.with_workers(deployment, args.workers)
    return run_and_report(args.data, build_config(args), args.output, deployment,
                          args.verbose, _local_registry(args, deployment, args.output))


def _local_registry(args: argparse.Namespace, deployment, output: str) -> dict:
    """The registry of a local run: --registry, else the settings' model_registry.root, else
    OUTPUT/registry; the model named by --model-name, the settings or the data."""
    from pipelines import settings

    root = args.registry or deployment.model_registry.root or os.path.join(output, "registry")
    return settings.registry(deployment, args.data, _absolute_root(root), args.model_name)


def _absolute_root(root: str) -> str:
    return root if root.startswith("gs://") else os.path.abspath(root)


def run_and_report(source: str, config: configs.PipelineConfig, output: str,
                   settings=None, verbose: bool = False, registry: dict | None = None) -> int:
    """Checks the arguments, the data and the model registry (before TensorFlow is imported),
    then the model and its weights (the preflight), runs the pipeline, prints and saves the
    summary."""
    from pipelines import local_run

    _check_output_folder(output)
    if registry:
        _check_registry(registry)
    checked = sources.check(source)
    if checked.kind == "folder":
        _check_output_outside(output, source)
        classes, files = discovery.discover(source)
        hidden = discovery.hidden_folders(source)
        if hidden:
            print(f"tlpipe: note: hidden folder(s) {hidden} in {source} are not read (names "
                  f"starting with '.' are never classes); rename them to train on them",
                  file=sys.stderr)
        _check_baseline_classes(config.evaluate.baseline_model, classes)
        config.finetune.check_batch_fits(len(files), source)
        if len(files) <= PREVIEW_MAX_FILES or 2 * config.finetune.batch_size > len(files):
            # plan the splits as ingest will (file hashes and headers, no decoding)
            train = ingestion.preview_counts(source, config.data)["train"]
            config.finetune.check_batch_fits(train, f"the training split of {source}")
    import_tensorflow_quietly()
    from components.core.train import model as models

    models.preflight(config.model, config.finetune)
    with local_run.output_lock(output):
        return _run_locked(source, config, output, settings, verbose, registry)


def _check_registry(registry: dict) -> None:
    """RegistryError (one line) when the registry cannot be read; its production version, if
    any, is read as the evaluate step will."""
    from components.core.registry import champion
    from components.core.registry.store import open_store

    if registry["root"].startswith("gs://"):
        open_store(registry["root"]).keys(f"{registry['model']}/aliases/")
    else:
        _check_writable_folder(registry["root"], "--registry")
    champion.production(registry)


def _run_locked(source: str, config: configs.PipelineConfig, output: str, settings,
                verbose: bool, registry: dict | None) -> int:
    """The run and its summary, report and model card, while holding the output's lock."""
    from pipelines import local_run

    try:
        run_dir = local_run.run(source, config.to_dict(), output, settings, verbose, registry)
    except local_run.StepFailed as failure:
        local_run.write_summary(output, failure.run_dir, "failed", {
            "step": failure.step, "error": failure.error, "log": failure.log})
        raise
    except local_run.Interrupted as interrupt:
        local_run.write_summary(output, interrupt.run_dir, "interrupted",
                                stop_signal=signal.Signals(interrupt.signum).name)
        raise
    local_run.write_summary(output, run_dir, "succeeded")
    summary = local_run.summarize(run_dir)
    print("\n" + "=" * 78)
    print(f"run: {run_dir}")
    print(local_run.report(summary, artifacts=verbose))
    if "evaluate" in summary:
        html, card = publish_report(run_dir, output)
        print(f"report: {os.path.abspath(html)}\nmodel card: {os.path.abspath(card)}")
    print(f"summary: {os.path.abspath(os.path.join(output, 'summary.json'))}")
    return 0


def _check_output_folder(folder: str) -> None:
    """ConfigError unless --output `folder` is a writable folder or can be made one."""
    _check_writable_folder(folder, "--output")


def _check_writable_folder(folder: str, flag: str) -> None:
    """ConfigError naming `flag` unless `folder` is a writable folder or can be made one (its
    nearest existing ancestor is a writable folder). Creates nothing."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{flag} {folder}: {existing} is a file; give a folder (it "
                          f"is created if it does not exist)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder}: {existing} is not writable; give a "
                          f"folder you can write to")


def _check_output_outside(output: str, data: str) -> None:
    """ConfigError when the output folder is the data folder or inside it: the run's files
    would be read as a class of images by this run or the next."""
    output, data = os.path.realpath(output), os.path.realpath(data)
    if os.path.commonpath([output, data]) == data:
        raise ConfigError(f"--output {output} is inside --data {data}: the run's files would "
                          f"become a class of images; give an --output outside the data "
                          f"folder (e.g. --output {os.path.join(os.path.dirname(data), 'runs')})")


def _check_baseline_classes(baseline: str, classes: list[str]) -> None:
    """A local baseline's labels.txt (written beside every shipped model) must list `classes`."""
    from components.core.evaluate.predict import labels_for

    labels = labels_for(baseline) if baseline and not baseline.startswith("gs://") else None
    if labels is not None and labels != classes:
        raise ConfigError(f"baseline {baseline} classifies {labels} but the data has "
                          f"classes {classes}; give a baseline trained on the same "
                          f"classes")


def demo(args: argparse.Namespace) -> int:
    """`tlpipe demo`: the offline digits demo."""
    from pipelines import demo, local_run

    _check_output_folder(args.output)
    try:
        folder = demo.write_digits(os.path.join(args.output, "digits"))
    except OSError as error:
        raise local_run.unwritable(args.output, error) from None
    print(f"demo data: scikit-learn handwritten digits written to {folder}")
    return run_and_report(folder, configs.preset("demo").validate(), args.output,
                          verbose=args.verbose, registry={
                              "root": os.path.abspath(os.path.join(args.output, "registry")),
                              "model": "digits", "promote": "auto"})


def compile_yaml(args: argparse.Namespace) -> int:
    """`tlpipe compile`: the pipeline as KFP v2 YAML."""
    from pipelines.transfer_learning import compile_pipeline

    folder = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output) or not os.path.isdir(folder):
        raise ConfigError(
            f"-o {args.output}: " + ("that is a folder; name the YAML file to write" if
                                     os.path.isdir(args.output) else
                                     f"folder {folder} does not exist; create it or write "
                                     f"elsewhere"))
    print(f"wrote {compile_pipeline(args.output, _settings(args))}")
    return 0


def _settings(args: argparse.Namespace):
    from pipelines import settings
    from pipelines.transfer_learning import STEP_ORDER

    return settings.load(args.settings, STEP_ORDER)


def submit(args: argparse.Namespace) -> int:
    """`tlpipe submit`: one run on a KFP cluster."""
    from pipelines import cluster

    config, deployment = build_config(args), _settings(args)
    created = cluster.submit(args.host, args.namespace, args.experiment, args.run_name,
                             args.data, config, deployment, _cluster_registry(args, deployment))
    print(f"run {created['run_id']}: {created['url']}")
    return 0


def runs(args: argparse.Namespace) -> int:
    """`tlpipe runs`: the cluster's runs, newest first."""
    from pipelines import cluster

    for run in cluster.runs(args.host, args.namespace, args.experiment, args.limit):
        print(f"{run['run_id']}  {run['state'] or '-':<10} {run['created_at']}  {run['name']}")
    return 0


def schedule(args: argparse.Namespace) -> int:
    """`tlpipe schedule`: a recurring run on the cluster."""
    from pipelines import cluster

    cluster.validate_cron(args.cron)
    config, deployment = build_config(args), _settings(args)
    created = cluster.schedule(args.host, args.namespace, args.experiment, args.name, args.cron,
                               args.max_concurrency, args.catchup, args.data, config, deployment,
                               _cluster_registry(args, deployment))
    print(f"recurring run {created['recurring_run_id']} ({args.cron}): {created['url']}")
    return 0


def _cluster_registry(args: argparse.Namespace, deployment) -> dict:
    """The registry of a cluster run (see `settings.registry`); a local --registry must be an
    absolute folder the step pods mount."""
    from pipelines import settings

    if args.registry and not args.registry.startswith(("gs://", "/")):
        raise ConfigError(f"--registry {args.registry}: the step pods need a gs://BUCKET/PATH "
                          f"prefix or an absolute folder they mount")
    return settings.registry(deployment, args.data, args.registry or "", args.model_name)


def schedules(args: argparse.Namespace) -> int:
    """`tlpipe schedules`: the cluster's recurring runs."""
    from pipelines import cluster

    for job in cluster.schedules(args.host, args.namespace, args.experiment, args.limit):
        print(f"{job['recurring_run_id']}  {job['status'] or '-':<9} {job['cron']:<16} "
              f"max {job['max_concurrency']}  {job['name']}")
    return 0


def unschedule(args: argparse.Namespace) -> int:
    """`tlpipe unschedule`: disables a recurring run (kept, listed as disabled)."""
    from pipelines import cluster

    cluster.unschedule(args.host, args.namespace, args.recurring_run_id)
    print(f"disabled recurring run {args.recurring_run_id}")
    return 0


def publish_report(run_dir: str, destination: str) -> tuple[str, str]:
    """Copies a run's newest HTML report and model card (the report step's when the model was
    exported, else the evaluate step's) to destination/report.html and model_card.md."""
    import shutil

    final = os.path.join(run_dir, "report")
    source = final if os.path.isdir(final) else os.path.join(run_dir, "evaluate")
    copies = (os.path.join(destination, "report.html"), os.path.join(destination,
                                                                     "model_card.md"))
    for name, copy in zip(("html" if source == final else "report", "model_card"), copies):
        shutil.copyfile(os.path.join(source, name), copy)
    return copies


def report(args: argparse.Namespace) -> int:
    """`tlpipe report`: a local run's evaluation summary and where its report and card are."""
    from components.core.evaluate import card, report

    run_dir = args.run
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        summary = _read_summary(summary_path)
        if summary.get("status") in ("failed", "interrupted"):
            failure = summary.get("failure") or {}
            raise StepError(f"the run in {summary['run_dir']} {summary['status']}" + (
                f" at step {failure['step']}: {failure['error']}" if failure else "") +
                f"; finished steps: {', '.join(summary['finished_steps']) or 'none'}")
        run_dir = summary["run_dir"]
    evaluation_dir = os.path.join(run_dir, "evaluate", "evaluation")
    if not os.path.isdir(evaluation_dir):
        raise InputError(f"{args.run} holds no evaluated run (no evaluate/evaluation/ under "
                         f"{run_dir}); pass the --output folder of `tlpipe run` or its "
                         f"runs/<pipeline>-<time> folder")
    exported = [os.path.join(run_dir, "quantize", "tflite"), os.path.join(run_dir, "tensorrt",
                                                                          "onnx")]
    record = report.read_evaluation(evaluation_dir, *(
        exported if all(os.path.isdir(path) for path in exported) else ()))
    print(card.summary_text(record))
    html, card = publish_report(run_dir, run_dir)
    print(f"report: {html}\nmodel card: {card}")
    if args.open:
        import webbrowser

        webbrowser.open(f"file://{os.path.abspath(html)}")
    return 0


def _read_summary(path: str) -> dict:
    """A summary.json `tlpipe run` wrote; InputError naming the file when it is damaged."""
    try:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        if not isinstance(summary, dict) or "run_dir" not in summary:
            raise ValueError("no run_dir in it")
        return summary
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is damaged ({type(error).__name__}: {error}); pass the run's "
                         f"runs/<pipeline>-<time> folder instead, or run again") from None


def predict(args: argparse.Namespace) -> int:
    """`tlpipe predict`: classifies image files with a shipped model."""
    from components.core.evaluate.predict import predict_files

    failed = 0
    for result in predict_files(args.model, args.images, args.top):
        if "error" in result:
            failed += 1
            print(f"tlpipe: {result['path']}: {result['error']}", file=sys.stderr, flush=True)
            continue
        ranked = ", ".join(f"{label} {probability:.3f}" for label, probability in result["top"])
        print(f"{result['path']}: {ranked}", flush=True)
    return 1 if failed else 0


def list_backbones(args: argparse.Namespace) -> int:
    """`tlpipe backbones`: the backbones and their defaults."""
    print(f"{'name':<22}{'keras.applications':<22}{'size':>5}{'min':>5}  preprocessing  alphas")
    for name, spec in sorted(backbones.REGISTRY.items()):
        alphas = ", ".join(str(a) for a in spec.alphas) or "-"
        print(f"{name:<22}{spec.constructor:<22}{spec.default_size:>5}{spec.min_size:>5}  "
              f"{spec.preprocess_mode:<13}  {alphas}")
    return 0


def models(args: argparse.Namespace) -> int:
    """`tlpipe models list|show|promote|rollback`: the model registry."""
    from components.core.registry import models as registry_models
    from components.core.registry.store import open_store

    store = open_store(_absolute_root(args.registry))
    name = _registry_model(store, args)
    if args.action == "list":
        print(_versions_table(store, name))
    elif args.action == "show":
        record = registry_models.version(store, name, args.version)
        history = [event for event in registry_models.events(store, name)
                   if event["version"] == args.version]
        print(json.dumps({**record, "events": history}, indent=2, sort_keys=True))
    else:
        moved = (registry_models.promote_by_hand(store, name, args.version,
                                                 registry_models.who())
                 if args.action == "promote" else
                 registry_models.rollback(store, name, registry_models.who()))
        print(f"{name}: production is version {moved['version']} ({moved['reason']})")
    return 0


def _registry_model(store, args: argparse.Namespace) -> str:
    """--model, else the registry's only model; RegistryError listing them otherwise."""
    from components.core.registry import models as registry_models
    from components.core.registry.store import RegistryError

    names = registry_models.models(store)
    if args.model:
        if args.model not in names:
            raise RegistryError(f"{store.root} has no model {args.model!r}; its models are "
                                f"{', '.join(names) or 'none yet'}")
        return args.model
    if len(names) != 1:
        raise RegistryError(f"{store.root} holds " + (
            f"models {', '.join(names)}; name one with --model" if names else
            "no model yet: a run that exports a model registers it (or pass another "
            "--registry)"))
    return names[0]


def _versions_table(store, name: str) -> str:
    """`tlpipe models list`: one line per version, newest first: number, production marker,
    test accuracy, data fingerprint, when, and what happened last and why."""
    from components.core.registry import models as registry_models

    current, _ = registry_models.alias(store, name)
    production = current["version"] if current else None
    latest = {event["version"]: event for event in registry_models.events(store, name)
              if event["action"] != "registered"}
    lines = [f"{name} in {store.root}: production is " + (
        f"version {production}" if production else "not set yet"),
        f"{'version':>7}  {'alias':<10} {'test acc':>8}  {'data':<12} {'registered':<19}  "
        f"status"]
    for record in reversed(registry_models.versions(store, name)):
        event = latest.get(record["version"], {})
        status = (f"{event['action']}: {event['reason']}" if event else
                  "registered (no decision recorded)")
        lines.append(f"{record['version']:>7}  "
                     f"{'production' if record['version'] == production else '':<10} "
                     f"{record['test_accuracy']:>8.4f}  "
                     f"{(record['data'].get('fingerprint') or '-')[:12]:<12} "
                     f"{record['registered_at'][:19].replace('T', ' ')}  {status}")
    return "\n".join(lines)
