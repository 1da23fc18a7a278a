"""Runs the compiled pipeline on this machine with `kfp.local` and summarises what it wrote.

The pipeline is compiled to YAML, loaded back and run with `SubprocessRunner(use_venv=False)`:
the same package a cluster runs, each step a subprocess of this Python environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
import warnings

from components.core.errors import InputError, StepError
from pipelines.console import StepConsole
from pipelines.transfer_learning import STEP_ORDER, compile_pipeline

LOGS = "logs"  # a run folder's subfolder of step logs and failure records
CONSOLE_LOG = "console.log"  # in LOGS: everything kfp.local and the steps printed
LOCK = ".tlpipe-run.lock"  # OUTPUT's lock file: {"pid", "host", "started"} of the run holding it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each ends a local run cleanly


class OutputRefused(InputError):
    """The output folder cannot take this run: another run holds its lock, or it cannot be
    written to (bad input: pick another --output)."""


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) turned into what Ctrl-C raises. signum: the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StepFailed(StepError):
    """A step of a local run failed. step: its name; error: "<Type>: <message>" as the step
    recorded it; log: the step's log file ("" when it wrote none); run_dir: the partial run."""

    def __init__(self, step: str, error: str, log: str, run_dir: str):
        where = f"; its log: {log}" if log else "; see its output above"
        super().__init__(f"step {step} failed: {error}{where}")
        self.step, self.error, self.log, self.run_dir = step, error, log, run_dir


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or another of STOP_SIGNALS) during a local run, after every process it started
    was ended. run_dir: the partial run ("" when none had started); signum: the signal."""

    def __init__(self, run_dir: str, signum: int = signal.SIGINT):
        super().__init__(run_dir)
        self.run_dir, self.signum = run_dir, signum


def stop_on_signals() -> None:
    """Makes SIGTERM and SIGHUP (what `timeout`, CI cancels, systemd, Kubernetes and a closed
    terminal send) raise `Stopped` like Ctrl-C raises KeyboardInterrupt, once, after ending
    every child process: the first stop signal starts the clean-up and later ones are ignored
    until it is done."""

    def stop(signum, _frame):
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        # kfp.local waits for the running step when the exception leaves its Popen block: end
        # the steps first (a terminal's Ctrl-C reaches them anyway; a `kill PID` does not)
        end_child_processes()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    for each in STOP_SIGNALS:
        signal.signal(each, stop)


@contextlib.contextmanager
def output_lock(output_dir: str):
    """Holds OUTPUT/.tlpipe-run.lock for one run: a second run into the same folder is refused
    (OutputRefused naming the holder's pid, host and start time) instead of sharing its runs/,
    logs and summary.json. The lock is an flock, so a holder that died (killed, power cut) left
    nothing held: its stale file is taken over. The file is removed when the run ends."""
    path = os.path.join(output_dir, LOCK)
    try:
        os.makedirs(output_dir, exist_ok=True)
        handle = _locked(path)
    except OSError as error:
        raise unwritable(output_dir, error) from None
    try:
        handle.seek(0)
        handle.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S%z")}, handle)
        handle.flush()
        yield path
    finally:
        os.unlink(path)  # while locked: the next run creates and locks a new file
        handle.close()


def unwritable(output_dir: str, error: OSError) -> OutputRefused:
    """The error for an output folder that could not be created or written to."""
    return OutputRefused(f"--output {output_dir} cannot be written to ({error.strerror}); give "
                         f"a folder you can write to")


def _locked(path: str):
    """The lock file at `path`, opened and flocked by this process; OutputRefused if another
    process holds it. A file unlinked by its holder between our open and our lock is not the
    lock any more: open the new one and try again."""
    import fcntl

    while True:
        handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _json_or_empty(handle.read())
            handle.close()
            raise OutputRefused(
                f"--output {os.path.dirname(path)} is in use by another tlpipe run (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')}); wait for it to end, or give another "
                f"--output") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _json_or_empty(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def run(source: str, config: dict, output_dir: str, settings=None, verbose: bool = False,
        registry: dict | None = None) -> str:
    """Compiles to OUTPUT/pipeline.yaml (with deployment `settings`, if given: kfp.local runs
    every step here and ignores images, resources, placement and secrets, which are for a
    cluster; a multi-worker fine-tune step starts its workers as local processes), runs it with
    artifacts under OUTPUT/runs/, and returns the run's directory, which also gets logs/ (each
    step's log). Steps get a temporary folder of their own (TMPDIR), removed afterwards.
    config: `PipelineConfig.to_dict()`, one pipeline parameter a section. The console shows
    one line per step (`console.StepConsole`); everything kfp.local and the steps print goes
    to the run's logs/console.log, and with `verbose` to stdout as well. Raises StepFailed
    naming the failed step and its error, or Interrupted on Ctrl-C or `Stopped` (every step
    process and its children ended first). registry: the pipeline's registry parameter
    (`settings.registry`; None: none). Hold `output_lock` around it."""
    import tempfile

    from kfp import components, local

    from components.core.config.schema import PipelineConfig
    from components.core.stages import STEP_RECORDS_ENV
    from components.core.train import search

    output_dir = os.path.abspath(output_dir)
    root = os.path.join(output_dir, "runs")
    os.makedirs(root, exist_ok=True)
    pipeline = components.load_component_from_file(
        compile_pipeline(os.path.join(output_dir, "pipeline.yaml"), settings,
                         launcher="local",
                         trials=search.trials(PipelineConfig.from_dict(config).finetune.search)))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=True)
    before = set(os.listdir(root))
    records = tempfile.mkdtemp(prefix=".step-records-", dir=output_dir)
    scratch = tempfile.mkdtemp(prefix=".tmp-", dir=output_dir)
    stream = StepConsole(sys.stdout, open(os.path.join(records, CONSOLE_LOG), "w",
                                          encoding="utf-8", errors="replace"),
                         verbose, sys.stdout.isatty(),
                         lambda step: step_figures(_new_run(root, before), step))
    try:
        with _environment({STEP_RECORDS_ENV: records, "TMPDIR": scratch}), \
                warnings.catch_warnings(), contextlib.redirect_stdout(stream):
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            try:
                pipeline(source=_absolute(source), registry=registry or {}, **config)
            finally:
                stream.close()  # before its file moves into the run folder
    except KeyboardInterrupt as interrupt:
        end_child_processes()
        raise Interrupted(_keep_records(_new_run(root, before), records),
                          getattr(interrupt, "signum", signal.SIGINT)) from None
    except RuntimeError as error:
        run_dir = _keep_records(_new_run(root, before), records)
        raise _step_failure(str(error), run_dir) from None
    else:
        run_dir = _keep_records(_new_run(root, before), records)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(records, ignore_errors=True)  # (moved into the run folder if there was one)
    if not run_dir:
        raise StepError(f"the local run wrote nothing under {root}")
    return run_dir


@contextlib.contextmanager
def _environment(values: dict):
    """os.environ with `values` set (the step processes inherit it), restored afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _new_run(root: str, before: set) -> str:
    """The run folder kfp.local created under `root` since `before` was listed, or ""."""
    created = sorted(name for name in set(os.listdir(root)) - before
                     if not name.startswith("."))
    return os.path.join(root, created[-1]) if created else ""


def _keep_records(run_dir: str, records: str) -> str:
    """Moves the steps' logs and failure records into run_dir/logs; returns run_dir."""
    if run_dir and os.path.isdir(records):
        shutil.move(records, os.path.join(run_dir, LOGS))
    return run_dir


def _step_failure(kfp_message: str, run_dir: str) -> StepFailed:
    """The StepFailed for kfp.local's "Inner task failed: 'STEP'" message, with the error the
    step recorded in run_dir/logs/STEP.error.json."""
    found = re.search(r"Inner task failed: '([^']+)'", re.sub(r"\x1b\[[0-9;]*m", "", kfp_message))
    step = found.group(1) if found else "unknown"
    logs = os.path.join(run_dir, LOGS) if run_dir else ""
    record_path = os.path.join(logs, f"{step}.error.json")
    if logs and os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        error = f"{record['type']}: {' '.join(record['message'].split())}"
    else:
        error = "the step process ended without recording an error (killed, or out of memory?)"
    log_path = os.path.join(logs, f"{step}.log")
    return StepFailed(step, error, log_path if os.path.isfile(log_path) else "", run_dir)


def end_child_processes(grace_seconds: float = 2.0) -> int:
    """SIGKILLs every process descended from this one (step processes and the workers they
    started in sessions of their own; TensorFlow catches SIGTERM) and waits up to
    `grace_seconds` for them to be gone. Returns how many there were."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=grace_seconds)
    return len(children)


def write_summary(output_dir: str, run_dir: str, status: str, failure: dict | None = None,
                  stop_signal: str = "") -> str:
    """Writes OUTPUT/summary.json (and a copy in run_dir): the run folder, its status
    ("succeeded", "failed" or "interrupted"), what failed ({"step", "error", "log"}, or None),
    the signal that interrupted it ("SIGINT", "SIGTERM", "SIGHUP"; only when interrupted) and
    every step that finished with its outputs (see `summarize`). Returns the path."""
    summary = summarize(run_dir) if run_dir else {}
    record = {"run_dir": run_dir, "status": status, "failure": failure,
              **({"signal": stop_signal} if stop_signal else {}),
              "finished_steps": list(summary), "steps": summary}
    path = os.path.join(output_dir, "summary.json")
    for target in (path, *([os.path.join(run_dir, "summary.json")] if run_dir else [])):
        with open(target, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
    return path


def summarize(run_dir: str) -> dict:
    """{step: {"outputs": {artifact: {"path", "metadata"}}, "returned": value}} for every step
    that ran, in pipeline order, read from each step's executor_output.json."""
    records = {step: _step_record(run_dir, step) for step in STEP_ORDER}
    return {step: record for step, record in records.items() if record}


def _step_record(run_dir: str, step: str) -> dict:
    """One step's entry of `summarize` ({} when it has not finished)."""
    path = os.path.join(run_dir, step, "executor_output.json")
    if not run_dir or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        output = json.load(handle)
    artifacts = {name: {"path": _local_path(entry["artifacts"][0]["uri"]),
                        "metadata": entry["artifacts"][0].get("metadata", {})}
                 for name, entry in output.get("artifacts", {}).items()}
    return {"outputs": artifacts, "returned": output.get("parameterValues", {}).get("Output")}


def step_figures(run_dir: str, step: str) -> str:
    """A finished step's key figures for its console line ("" for a step without any)."""
    record = _step_record(run_dir, step)
    meta = {name: artifact["metadata"] for name, artifact in record.get("outputs", {}).items()}
    if "dataset" in meta:
        counts = meta["dataset"]["counts"]
        return (f"{counts['train']} train / {counts['val']} val / {counts['test']} test images, "
                f"{len(meta['dataset']['classes'])} classes")
    if "head" in meta:
        return f"val accuracy {meta['head']['val_accuracy']:.4f}"
    if "model" in meta and "chosen" in meta["model"]:
        tuned = meta["model"]
        after = (f" -> {tuned['finetuned_val_accuracy']:.4f}"
                 if tuned["finetuned_val_accuracy"] >= 0 else "")
        return (f"val accuracy {tuned['head_only_val_accuracy']:.4f}{after}, shipped "
                f"{tuned['chosen']}")
    if "evaluation" in meta:
        return (f"test accuracy {meta['metrics']['accuracy']:.4f}, blessed "
                f"{meta['evaluation']['blessed']}")
    if "verdict" in meta:
        return record["returned"]
    exported = (meta.get("tflite") or {}).get("variants") or {
        name: figures for name, figures in (meta.get("onnx") or {}).items()
        if name.startswith("onnx") and isinstance(figures, dict)}
    if exported:
        accepted = [name for name, figures in exported.items()
                    if figures.get("status") == "accepted"]
        recommended = meta.get("tflite", {}).get("recommended") or meta["onnx"]["recommended_onnx"]
        return f"accepted {', '.join(accepted)}; recommended {recommended}"
    return ""


def shipped_model_step(summary: dict) -> str:
    """The step whose `model` artifact the run evaluated and exported: "pick-trial" after a
    fine-tuning search, else "finetune"."""
    return "pick-trial" if "pick-trial" in summary else "finetune"


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def report(summary: dict, artifacts: bool = True) -> str:
    """The human summary printed at the end of `tlpipe run`: verdict, figures and (with
    `artifacts`) every artifact's path."""
    lines = []
    prepared = summary.get("preprocess", {}).get("outputs", {}).get("backbone", {})
    if prepared:
        meta = prepared["metadata"]
        lines.append(f"backbone weights: {meta.get('weights')} ({meta.get('weights_detail')})")
    tuned = summary.get(shipped_model_step(summary), {}).get("outputs", {}).get(
        "model", {}).get("metadata", {})
    if tuned.get("trials"):
        lines.append(f"fine-tuning search: {tuned['trials']} trials, shipped {tuned['trial']}")
    if tuned:
        lines.append(f"shipped model: {tuned.get('chosen')}; {tuned.get('reason')}")
    evaluated = summary.get("evaluate", {})
    if evaluated:
        metrics = evaluated["outputs"]["metrics"]["metadata"]
        lines.append(f"TEST ACCURACY: {metrics['accuracy']:.4f} on {int(metrics['test_examples'])}"
                     f" test images (macro F1 {metrics['macro_f1']:.4f})")
        blessed = evaluated["outputs"]["evaluation"]["metadata"]["blessed"]
        lines.append(f"blessed: {blessed} ({metrics.get('blessing_reason')})")
        if metrics.get("champion"):
            lines.append(f"champion/challenger: {metrics['champion']}")
    quantized = summary.get("quantize", {}).get("outputs", {}).get("tflite", {}).get(
        "metadata", {})
    if quantized:
        lines.append(f"TFLite (gate: at most {quantized['max_accuracy_drop_points']} points below "
                     f"float, agreement at least {quantized['min_agreement']:.0%}; "
                     f"recommended: {quantized['recommended_file']}, "
                     f"{quantized['recommended_reason']}):")
        lines.extend(_format_line(name, figures)
                     for name, figures in quantized["variants"].items())
    exported = summary.get("tensorrt", {}).get("outputs", {}).get("onnx", {}).get("metadata", {})
    if exported:
        lines.append(f"ONNX (same gate; recommended: {exported['recommended_onnx']}, "
                     f"{exported['recommended_onnx_reason']}):")
        lines.extend(_format_line(name, exported[name])
                     for name in ("onnx", "onnx_fp16", "onnx_int8") if name in exported)
        engine = exported["tensorrt"]
        lines.append(_format_line("tensorrt", engine) if engine["status"] == "built" else
                     f"  {'tensorrt':>13}: skipped: {engine['reason']}")
    promoted = summary.get("promote", {}).get("returned")
    if promoted:
        lines.append(f"model registry: {promoted}")
    if not artifacts:
        return "\n".join(lines)
    lines.append("artifacts:")
    for step, entry in summary.items():
        for name, artifact in entry["outputs"].items():
            lines.append(f"  {step}.{name}: {artifact['path']}")
    return "\n".join(lines)


def _format_line(name: str, figures: dict) -> str:
    """One exported format: test accuracy (and its drop below float, where gated), agreement
    with Keras, size (and how many times smaller than the float ONNX), batch-1 CPU latency."""
    verdict = f" {figures['status'].upper()}" if "status" in figures else ""
    if "accuracy_drop_points" in figures:
        verdict += f" (drop {figures['accuracy_drop_points']:.2f} points)"
    ratio = f" ({figures['size_ratio']:.2f}x smaller)" if "size_ratio" in figures else ""
    return (f"  {name:>13}: test accuracy {figures['test_accuracy']:.4f}{verdict}, top-1 "
            f"agreement {figures['top1_agreement']:.3f}, {figures['size_bytes'] / 1e6:.2f} MB"
            f"{ratio}, "
            f"{figures['latency_ms_median']:.2f} ms/image median, "
            f"{figures['latency_ms_p90']:.2f} p90")


def _absolute(source: str) -> str:
    """Local paths made absolute (the steps run in other working directories); URIs as given."""
    return source if source.startswith(("gs://", "tfds:")) else os.path.abspath(source)
