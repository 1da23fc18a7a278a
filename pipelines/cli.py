"""`tlpipe`: run the pipeline locally, run the offline demo, compile it for a cluster, submit
and schedule runs there, classify images with a shipped model, list backbones."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from components.core.config import schema as configs
from components.core.errors import InputError, StepError
from components.core.io.console import import_tensorflow_quietly
from pipelines import commands
from pipelines.commands import OVERRIDES

# Commands that import TensorFlow (which prints start-up notices to stderr whatever
# TF_CPP_MIN_LOG_LEVEL says: held back, see console.import_tensorflow_quietly).
TENSORFLOW_COMMANDS = ("predict",)  # run and demo import it after checking their arguments
BUG_EXIT_CODE = 70  # EX_SOFTWARE (sysexits.h): an internal error
PIPELINE_COMMANDS = ("run", "demo")  # end cleanly on SIGTERM and SIGHUP too (see stop_on_signals)


def main(argv: list[str] | None = None) -> int:
    """The `tlpipe` command. Exit codes: 0 done; 1 a step or an image failed (one line on
    stderr each; `StepError`); 2 bad input (one line; `InputError`); 128 + the signal when
    interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); BUG_EXIT_CODE for any other exception,
    a bug, its traceback written to a file named on stderr."""
    from pipelines import local_run

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # steps inherit it: no C++ info spam
    _show_warnings()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in PIPELINE_COMMANDS:
        local_run.stop_on_signals()
    try:
        if args.command in TENSORFLOW_COMMANDS:
            import_tensorflow_quietly()
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the try, not at exit
        return code
    except InputError as error:  # ConfigError, DataError, WeightsError...: bad input, named
        print(f"tlpipe: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except StepError as error:  # StepFailed: the step, its error and its log
        print(f"tlpipe: {_one_line(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped reading (`tlpipe backbones | head`): done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except KeyboardInterrupt as interrupt:
        local_run.end_child_processes()
        where = getattr(interrupt, "run_dir", "")
        signum = getattr(interrupt, "signum", signal.SIGINT)
        how = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        print(f"tlpipe: interrupted{how}" + (f"; partial run in {where}" if where else ""),
              file=sys.stderr)
        return 128 + signum
    except Exception as error:  # raised by no rule of tlpipe's: a bug, not the user's input
        print(f"tlpipe: internal error (a bug in tlpipe): {type(error).__name__}: "
              f"{_one_line(error)}; the traceback is "
              f"in {_write_traceback()}: please report it with that file", file=sys.stderr)
        return BUG_EXIT_CODE


def _write_traceback() -> str:
    """Writes the exception being handled, with its traceback, to a new file in the temporary
    folder; returns its path."""
    import tempfile
    import traceback

    handle, path = tempfile.mkstemp(prefix="tlpipe-bug-", suffix=".log")
    with os.fdopen(handle, "w", encoding="utf-8") as log:
        log.write(traceback.format_exc())
    return path


class _StderrNow(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _show_warnings() -> None:
    """tlpipe's warnings in this process (e.g. Cloud Storage retrying) as one "tlpipe: warning:"
    line each on stderr; the steps log theirs to their own log files."""
    logger = logging.getLogger("tlpipe")
    if not any(isinstance(handler, _StderrNow) for handler in logger.handlers):
        handler = _StderrNow()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("tlpipe: warning: %(message)s"))
        logger.addHandler(handler)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlpipe", description="Transfer learning for image classification as a Kubeflow "
        "pipeline: run it locally, or compile it for a cluster.",
        epilog=f"exit codes: 0 done; 1 a step (or, in predict, an image) failed; 2 bad input; "
        f"{BUG_EXIT_CODE} an internal error (a bug in tlpipe); 128 + N interrupted by signal N")
    subcommands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    run = subcommands.add_parser("run", help="run the whole pipeline locally (kfp.local)",
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
    _add_registry_options(run, local=True)
    _add_verbose_option(run)
    run.set_defaults(handler=commands.run)

    demo = subcommands.add_parser("demo", help="run the pipeline on scikit-learn's handwritten "
                               "digits (offline, a few minutes on 2 cores)")
    demo.add_argument("--output", default="demo-output",
                      help="output folder (default: %(default)s)")
    _add_verbose_option(demo)
    demo.set_defaults(handler=commands.demo)

    compile_ = subcommands.add_parser("compile", help="write the pipeline as KFP v2 YAML")
    compile_.add_argument("-o", "--output", default="pipeline.yaml",
                          help="YAML file to write (default: %(default)s)")
    _add_settings_option(compile_)
    compile_.set_defaults(handler=commands.compile_yaml)

    submit = subcommands.add_parser(
        "submit", help="start a run on a KFP cluster",
        description="Compile the pipeline (with --settings) and start a run of it on a Kubeflow "
                    "Pipelines cluster; prints the run id and its UI link.")
    _add_cluster_options(submit, experiment=True)
    submit.add_argument("--run-name", help="run name (default: KFP's)")
    _add_cluster_run_options(submit)
    _add_registry_options(submit)
    submit.set_defaults(handler=commands.submit)

    runs = subcommands.add_parser("runs", help="list runs on a KFP cluster, newest first")
    _add_cluster_options(runs, experiment=True, listing=True)
    runs.set_defaults(handler=commands.runs)

    schedule = subcommands.add_parser(
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
    _add_registry_options(schedule)
    schedule.set_defaults(handler=commands.schedule)

    schedules = subcommands.add_parser("schedules", help="list recurring runs on a KFP cluster")
    _add_cluster_options(schedules, experiment=True, listing=True)
    schedules.set_defaults(handler=commands.schedules)

    unschedule = subcommands.add_parser("unschedule", help="disable a recurring run")
    _add_cluster_options(unschedule)
    unschedule.add_argument("recurring_run_id", help="id shown by `tlpipe schedules`")
    unschedule.set_defaults(handler=commands.unschedule)

    predict = subcommands.add_parser(
        "predict", help="classify image files with an exported model",
        description="Classify image files with a model the pipeline wrote: model.keras, the "
        "saved_model folder, a .tflite or model.onnx. Raw images of any size: preprocessing "
        "is inside the model; class names come from labels.txt beside it.")
    predict.add_argument("model", help="model file or SavedModel folder")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top", type=int, default=3, help="classes to show (default: 3)")
    predict.set_defaults(handler=commands.predict)

    summary = subcommands.add_parser(
        "report", help="print the evaluation summary of a local run",
        description="Print a local run's verdict, test metrics with confidence intervals, "
                    "per-class scores and exported formats, and where its HTML report and "
                    "model card are.")
    summary.add_argument("run", help="the run's output folder (holding summary.json) or its "
                                     "runs/<pipeline>-<time> folder")
    summary.add_argument("--open", action="store_true",
                         help="also open the HTML report in the default browser")
    summary.set_defaults(handler=commands.report)

    registry = subcommands.add_parser(
        "models", help="the model registry: versions, production, promote, rollback",
        description="Every run that exports a model registers it as a new version; production "
                    "moves to it when it beats the production model on the run's test split "
                    "(model_registry.promote: auto). List the versions and why each was or was "
                    "not promoted, show one, promote one by hand, or roll production back.")
    actions = registry.add_subparsers(required=True, metavar="ACTION", dest="action")
    for action, text in (("list", "versions, newest first: production, test accuracy, data "
                                  "fingerprint, when, why promoted or not"),
                         ("show", "one version's record and history (JSON)"),
                         ("promote", "move production to a version"),
                         ("rollback", "move production back to the previous production "
                                      "version")):
        command = actions.add_parser(action, help=text, description=text)
        if action in ("show", "promote"):
            command.add_argument("version", type=int, help="version number (`tlpipe models "
                                                           "list`)")
        command.add_argument("--registry", default=os.path.join("runs", "registry"),
                             help="registry root: a folder or gs://BUCKET/PATH (default: "
                                  "%(default)s, where `tlpipe run` keeps it)")
        command.add_argument("--model", help="model name (default: the registry's only one)")
        command.set_defaults(handler=commands.models)

    listing = subcommands.add_parser("backbones", help="list the backbones and their defaults")
    listing.set_defaults(handler=commands.list_backbones)
    return parser


def _add_registry_options(parser: argparse.ArgumentParser, local: bool = False) -> None:
    parser.add_argument("--registry", help="model registry root: a folder or gs://BUCKET/PATH "
                        "(default: the settings' model_registry.root, else " + (
                            "OUTPUT/registry" if local else "<pipeline_root>/registry on "
                            "gs://") + "); the run is compared with its production model and "
                        "registered in it")
    parser.add_argument("--model-name", help="the model's name in the registry (default: the "
                        "settings' model_registry.model, else the data's name)")


def _add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="stream everything kfp.local and the steps print (executor JSON, "
                             "TensorFlow, worker lines) and list every artifact at the end; "
                             "without it: one line per step, a progress bar on a terminal, the "
                             "full output in the run's logs/console.log")


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


if __name__ == "__main__":
    sys.exit(main())
