"""`tlpipe`: run the pipeline locally, run the offline demo, compile it for a cluster, submit
and schedule runs there, classify images with a shipped model, list backbones."""

from __future__ import annotations

import argparse
import json
import os
import sys

from components.core import backbones, config as configs, data, sources

# Flags that override one config field: flag -> (section, field, type, help).
OVERRIDES = {
    "--backbone": ("model", "backbone", str, "backbone name (see `tlpipe backbones`)"),
    "--alpha": ("model", "alpha", float, "width multiplier (MobileNet family)"),
    "--image-size": ("model", "image_size", int, "input side in pixels (default: backbone's)"),
    "--weights": ("model", "weights", str, "imagenet, none, a weights file or a gs:// URI"),
    "--seed": ("data", "seed", int, "split and training seed"),
    "--head-steps": ("head", "max_steps", int, "maximum full-batch head training steps"),
    "--finetune-epochs": ("finetune", "epochs", int, "maximum fine-tune epochs (0: none)"),
    "--unfreeze-layers": ("finetune", "unfreeze_layers", int,
                          "backbone layers to fine-tune from the top (0: backbone default)"),
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
# Commands that import TensorFlow (which prints start-up notices to stderr whatever
# TF_CPP_MIN_LOG_LEVEL says: held back, see _import_tensorflow_quietly).
TENSORFLOW_COMMANDS = ("run", "demo", "predict")


def main(argv: list[str] | None = None) -> int:
    """The `tlpipe` command. Exit codes: 0 done; 1 a step or an image failed (one line on
    stderr each); 2 bad input, before any work (one line); 130 interrupted (Ctrl-C)."""
    from pipelines import local_run

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # steps inherit it: no C++ info spam
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command in TENSORFLOW_COMMANDS:
            _import_tensorflow_quietly()
        return args.handler(args)
    except ValueError as error:  # ConfigError, DataError, WeightsError: bad input, named
        print(f"tlpipe: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # StepFailed: the step, its error and its log
        print(f"tlpipe: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        local_run.end_child_processes()
        where = getattr(interrupt, "run_dir", "")
        print("tlpipe: interrupted" + (f"; partial run in {where}" if where else ""),
              file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its start-up notices held back (see console.held_stderr)."""
    from components.core.console import held_stderr

    with held_stderr():
        import tensorflow  # noqa: F401


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlpipe", description="Transfer learning for image classification as a Kubeflow "
        "pipeline: run it locally, or compile it for a cluster.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    run = commands.add_parser("run", help="run the whole pipeline locally (kfp.local)",
                              description="Compile the pipeline and run it on this machine with "
                              "kfp.local; prints the test accuracy and where every artifact is.")
    run.add_argument("--data", required=True,
                     help="images: a folder of class subfolders (or of train/ [val/] [test/] "
                          "subfolders), gs://bucket/prefix of the same, a .zip/.tar/.tar.gz "
                          "archive of it (local or gs://), or tfds:NAME?split=S&data_dir=D")
    _add_run_options(run, default_output="runs")
    _add_settings_option(run)
    run.add_argument("--workers", type=int,
                     help="fine-tune with this many worker processes on this machine "
                          "(MultiWorkerMirroredStrategy over 127.0.0.1; default: the settings' "
                          "steps.finetune.workers, else 1)")
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="run the pipeline on scikit-learn's handwritten "
                               "digits (offline, a few minutes on 2 cores)")
    demo.add_argument("--output", default="demo-output",
                      help="output folder (default: %(default)s)")
    demo.set_defaults(handler=_demo)

    compile_ = commands.add_parser("compile", help="write the pipeline as KFP v2 YAML")
    compile_.add_argument("-o", "--output", default="pipeline.yaml",
                          help="YAML file to write (default: %(default)s)")
    _add_settings_option(compile_)
    compile_.set_defaults(handler=_compile)

    submit = commands.add_parser(
        "submit", help="start a run on a KFP cluster",
        description="Compile the pipeline (with --settings) and start a run of it on a Kubeflow "
                    "Pipelines cluster; prints the run id and its UI link.")
    _add_cluster_options(submit, experiment=True)
    submit.add_argument("--run-name", help="run name (default: KFP's)")
    _add_cluster_run_options(submit)
    submit.set_defaults(handler=_submit)

    runs = commands.add_parser("runs", help="list runs on a KFP cluster, newest first")
    _add_cluster_options(runs, experiment=True, listing=True)
    runs.set_defaults(handler=_runs)

    schedule = commands.add_parser(
        "schedule", help="schedule recurring retraining on a KFP cluster",
        description="Create an enabled recurring run: the pipeline with --settings and the "
                    "config, on a six-field cron schedule (seconds first).")
    _add_cluster_options(schedule, experiment=True)
    schedule.add_argument("--cron", required=True,
                          help='six fields, seconds first: "0 0 3 * * 1" is Mondays 03:00')
    schedule.add_argument("--name", default="tlpipe-retraining",
                          help="recurring run name (default: %(default)s)")
    schedule.add_argument("--max-concurrency", type=int, default=1,
                          help="runs of this schedule at once (default: %(default)s)")
    schedule.add_argument("--catchup", action="store_true",
                          help="after a pause, also start the runs that were missed (default: "
                               "no catch-up)")
    _add_cluster_run_options(schedule)
    schedule.set_defaults(handler=_schedule)

    schedules = commands.add_parser("schedules", help="list recurring runs on a KFP cluster")
    _add_cluster_options(schedules, experiment=True, listing=True)
    schedules.set_defaults(handler=_schedules)

    unschedule = commands.add_parser("unschedule", help="disable a recurring run")
    _add_cluster_options(unschedule)
    unschedule.add_argument("recurring_run_id", help="id shown by `tlpipe schedules`")
    unschedule.set_defaults(handler=_unschedule)

    predict = commands.add_parser(
        "predict", help="classify image files with an exported model",
        description="Classify image files with a model the pipeline wrote: model.keras, the "
        "saved_model folder, a .tflite or model.onnx. Raw images of any size: preprocessing "
        "is inside the model; class names come from labels.txt beside it.")
    predict.add_argument("model", help="model file or SavedModel folder")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top", type=int, default=3, help="classes to show (default: 3)")
    predict.set_defaults(handler=_predict)

    summary = commands.add_parser(
        "report", help="print the evaluation summary of a local run",
        description="Print a local run's verdict, test metrics with confidence intervals, "
                    "per-class scores and exported formats, and where its HTML report and "
                    "model card are.")
    summary.add_argument("run", help="the run's output folder (holding summary.json) or its "
                                     "runs/<pipeline>-<time> folder")
    summary.add_argument("--open", action="store_true",
                         help="also open the HTML report in the default browser")
    summary.set_defaults(handler=_report)

    listing = commands.add_parser("backbones", help="list the backbones and their defaults")
    listing.set_defaults(handler=_backbones)
    return parser


def _add_run_options(parser: argparse.ArgumentParser, default_output: str) -> None:
    parser.add_argument("--output", default=default_output,
                        help="folder for the compiled pipeline and the run's artifacts "
                             "(default: %(default)s)")
    _add_config_options(parser)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of config overrides (see README)")
    parser.add_argument("--preset", default="default", choices=sorted(configs.PRESETS),
                        help="config preset the file and flags apply on (default: %(default)s)")
    for flag, (_, _, kind, text) in OVERRIDES.items():
        parser.add_argument(flag, type=kind, help=text)


def _add_settings_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", help="deployment settings YAML: images, pipeline root, "
                                           "GPUs, resources, node selectors, tolerations, "
                                           "secrets, retries, caching, time-outs (see README)")


def _add_cluster_run_options(parser: argparse.ArgumentParser) -> None:
    """What a run on the cluster is made of: its source, deployment settings and config."""
    parser.add_argument("--data", required=True,
                        help="image source as the step pods see it: gs://bucket/prefix, an "
                             "archive, tfds:NAME?split=S, or a mounted path")
    _add_settings_option(parser)
    _add_config_options(parser)


def _add_cluster_options(parser: argparse.ArgumentParser, experiment: bool = False,
                         listing: bool = False) -> None:
    from pipelines import cluster

    parser.add_argument("--host", help=f"KFP API endpoint, e.g. https://kfp.example.com/pipeline "
                                       f"(default: ${cluster.HOST_ENV}, else your kubeconfig); "
                                       f"token: ${cluster.TOKEN_ENV} or the pod's service "
                                       f"account")
    parser.add_argument("--namespace", help="KFP namespace (multi-user clusters)")
    if experiment:
        parser.add_argument("--experiment", default=None if listing else "tlpipe",
                            help="experiment name" + ("" if listing else " (default: tlpipe)"))
    if listing:
        parser.add_argument("--limit", type=int, default=20,
                            help="how many to show (default: %(default)s)")


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
    config = config.with_overrides(overrides).validate()
    if os.path.isfile(config.model.weights):  # steps may run in another working directory
        config.model.weights = os.path.abspath(config.model.weights)
    baseline = config.evaluate.baseline_model
    if baseline and not baseline.startswith("gs://"):
        if not (os.path.isfile(baseline) and baseline.endswith(".keras")):
            raise configs.ConfigError(f"baseline model {baseline} is not a .keras file; give the "
                                      f"model/model.keras of an earlier run")
        config.evaluate.baseline_model = os.path.abspath(baseline)
    return config


def _run(args: argparse.Namespace) -> int:
    from pipelines import settings

    deployment = _settings(args)
    if args.workers is not None:
        deployment = settings.with_workers(deployment, args.workers)
    return run_and_report(args.data, build_config(args), args.output, deployment)


def run_and_report(source: str, config: configs.PipelineConfig, output: str,
                   settings=None) -> int:
    """Checks the data and model cheaply, runs the pipeline, prints and saves the summary."""
    from components.core import model as models, stages
    from pipelines import local_run

    _check_output_folder(output)
    checked = sources.check(source)
    models.preflight(config.model, config.finetune)
    if checked.kind == "folder":
        classes, files = data.discover(source)
        _check_baseline_classes(config.evaluate.baseline_model, classes)
        stages.check_batch_fits(config.finetune, len(files), source)
        if len(files) <= PREVIEW_MAX_FILES or 2 * config.finetune.batch_size > len(files):
            # plan the splits as ingest will (file hashes and headers, no decoding)
            train = data.preview_counts(source, config.data)["train"]
            stages.check_batch_fits(config.finetune, train, f"the training split of {source}")
    try:
        run_dir = local_run.run(source, config.to_dict(), output, settings)
    except local_run.StepFailed as failure:
        local_run.write_summary(output, failure.run_dir, "failed", {
            "step": failure.step, "error": failure.error, "log": failure.log})
        raise
    except local_run.Interrupted as interrupt:
        local_run.write_summary(output, interrupt.run_dir, "interrupted")
        raise
    local_run.write_summary(output, run_dir, "succeeded")
    summary = local_run.summarize(run_dir)
    print("\n" + "=" * 78)
    print(f"run: {run_dir}")
    print(local_run.report(summary))
    if "evaluate" in summary:
        html, card = publish_report(run_dir, output)
        print(f"report: {os.path.abspath(html)}\nmodel card: {os.path.abspath(card)}")
    print(f"summary: {os.path.abspath(os.path.join(output, 'summary.json'))}")
    return 0


def _check_output_folder(folder: str) -> None:
    """ConfigError unless `folder` is a writable folder or can be made one (its nearest
    existing ancestor is a writable folder). Creates nothing."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise configs.ConfigError(f"--output {folder}: {existing} is a file; give a folder (it "
                                  f"is created if it does not exist)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise configs.ConfigError(f"--output {folder}: {existing} is not writable; give a "
                                  f"folder you can write to")


def _check_baseline_classes(baseline: str, classes: list[str]) -> None:
    """A local baseline's labels.txt (written beside every shipped model) must list `classes`."""
    from components.core.predict import labels_for

    labels = labels_for(baseline) if baseline and not baseline.startswith("gs://") else None
    if labels is not None and labels != classes:
        raise configs.ConfigError(f"baseline {baseline} classifies {labels} but the data has "
                                  f"classes {classes}; give a baseline trained on the same "
                                  f"classes")


def _demo(args: argparse.Namespace) -> int:
    from pipelines import demo

    folder = demo.write_digits(os.path.join(args.output, "digits"))
    print(f"demo data: scikit-learn handwritten digits written to {folder}")
    return run_and_report(folder, configs.preset("demo").validate(), args.output)


def _compile(args: argparse.Namespace) -> int:
    from pipelines.transfer_learning import compile_pipeline

    folder = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output) or not os.path.isdir(folder):
        raise configs.ConfigError(
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


def _submit(args: argparse.Namespace) -> int:
    from pipelines import cluster

    config, deployment = build_config(args), _settings(args)
    created = cluster.submit(args.host, args.namespace, args.experiment, args.run_name,
                             args.data, config, deployment)
    print(f"run {created['run_id']}: {created['url']}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from pipelines import cluster

    for run in cluster.runs(args.host, args.namespace, args.experiment, args.limit):
        print(f"{run['run_id']}  {run['state'] or '-':<10} {run['created_at']}  {run['name']}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines import cluster

    cluster.validate_cron(args.cron)
    config, deployment = build_config(args), _settings(args)
    created = cluster.schedule(args.host, args.namespace, args.experiment, args.name, args.cron,
                               args.max_concurrency, args.catchup, args.data, config, deployment)
    print(f"recurring run {created['recurring_run_id']} ({args.cron}): {created['url']}")
    return 0


def _schedules(args: argparse.Namespace) -> int:
    from pipelines import cluster

    for job in cluster.schedules(args.host, args.namespace, args.experiment, args.limit):
        print(f"{job['recurring_run_id']}  {job['status'] or '-':<9} {job['cron']:<16} "
              f"max {job['max_concurrency']}  {job['name']}")
    return 0


def _unschedule(args: argparse.Namespace) -> int:
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


def _report(args: argparse.Namespace) -> int:
    from components.core import report

    run_dir = args.run
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        summary = _read_summary(summary_path)
        if summary.get("status") in ("failed", "interrupted"):
            failure = summary.get("failure") or {}
            raise RuntimeError(f"the run in {summary['run_dir']} {summary['status']}" + (
                f" at step {failure['step']}: {failure['error']}" if failure else "") +
                f"; finished steps: {', '.join(summary['finished_steps']) or 'none'}")
        run_dir = summary["run_dir"]
    evaluation_dir = os.path.join(run_dir, "evaluate", "evaluation")
    if not os.path.isdir(evaluation_dir):
        raise ValueError(f"{args.run} holds no evaluated run (no evaluate/evaluation/ under "
                         f"{run_dir}); pass the --output folder of `tlpipe run` or its "
                         f"runs/<pipeline>-<time> folder")
    exported = [os.path.join(run_dir, "quantize", "tflite"), os.path.join(run_dir, "tensorrt",
                                                                         "onnx")]
    record = report.read_evaluation(evaluation_dir, *(
        exported if all(os.path.isdir(path) for path in exported) else ()))
    print(report.summary_text(record))
    html, card = publish_report(run_dir, run_dir)
    print(f"report: {html}\nmodel card: {card}")
    if args.open:
        import webbrowser

        webbrowser.open(f"file://{os.path.abspath(html)}")
    return 0


def _read_summary(path: str) -> dict:
    """A summary.json `tlpipe run` wrote; ValueError naming the file when it is damaged."""
    try:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        if not isinstance(summary, dict) or "run_dir" not in summary:
            raise ValueError("no run_dir in it")
        return summary
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}); pass the run's "
                         f"runs/<pipeline>-<time> folder instead, or run again") from None


def _predict(args: argparse.Namespace) -> int:
    from components.core.predict import predict_files

    failed = 0
    for result in predict_files(args.model, args.images, args.top):
        if "error" in result:
            failed += 1
            print(f"tlpipe: {result['path']}: {result['error']}", file=sys.stderr, flush=True)
            continue
        ranked = ", ".join(f"{label} {probability:.3f}" for label, probability in result["top"])
        print(f"{result['path']}: {ranked}", flush=True)
    return 1 if failed else 0


def _backbones(args: argparse.Namespace) -> int:
    print(f"{'name':<22}{'keras.applications':<22}{'size':>5}{'min':>5}  preprocessing  alphas")
    for name, spec in sorted(backbones.REGISTRY.items()):
        alphas = ", ".join(str(a) for a in spec.alphas) or "-"
        print(f"{name:<22}{spec.constructor:<22}{spec.default_size:>5}{spec.min_size:>5}  "
              f"{spec.preprocess_mode:<13}  {alphas}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
