"""The console of `tlpipe run`: one line per step, a progress bar with an ETA on a terminal,
everything else in the run's console.log (or streamed with --verbose)."""

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from pipelines.console import StepConsole, duration, progress_bar
from tests.helpers import ROOT, assert_one_line, start_tlpipe, write_digits

TINY = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", "none",
        "--head-steps", "20", "--finetune-epochs", "3", "--min-accuracy", "0"]

KFP_LINES = """\x1b[96m'ingest'\x1b[0m
07:17:07.619 - INFO - Executing task \x1b[96m'ingest'\x1b[0m
07:17:07.619 - INFO - Streamed logs:

    {"inputs": {"parameterValues": {"source": "/data"}}}
    2026-12-04 07:17:08,000 tlpipe.ingest INFO: checked files: 120/400 (60.0/s)
07:17:12.204 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
07:17:27.114 - INFO - Executing task \x1b[96m'finetune'\x1b[0m
    2026-12-04 07:17:40,000 tlpipe.training INFO: finetune epoch 1/4: loss=1.0 accuracy=0.5
    [worker 0] 2026-12-04 07:17:50,000 tlpipe.training INFO: finetune epoch 2/4: loss=0.9
07:19:35.291 - INFO - Task \x1b[96m'finetune'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
"""


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 5.0
        return self.now


def test_a_person_sees_one_line_per_step_and_the_log_gets_everything():
    terminal, log = io.StringIO(), io.StringIO()
    console = StepConsole(terminal, log, verbose=False, interactive=False,
                          figures=lambda step: "400 images" if step == "ingest" else "",
                          clock=Clock())
    for chunk in (KFP_LINES[:50], KFP_LINES[50:333], KFP_LINES[333:]):  # lines split anywhere
        console.write(chunk)
    assert log.getvalue() == KFP_LINES
    ingest, finetune = terminal.getvalue().splitlines()
    assert re.fullmatch(r"    ok  ingest +\d+\.0 s  400 images", ingest)
    assert re.fullmatch(r"failure  finetune +\d+\.0 s", finetune)


def test_on_a_terminal_the_running_step_shows_a_progress_bar_rewritten_in_place():
    terminal = io.StringIO()
    console = StepConsole(terminal, io.StringIO(), verbose=False, interactive=True,
                          clock=Clock())
    console.write(KFP_LINES)
    screen = terminal.getvalue()
    assert "   ...  ingest" in screen
    assert re.search(r"\[#######-{17}\] 120/400 checked files, ETA \d+s", screen)
    assert re.search(r"\[######-{18}\] 1/4 finetune epoch, ETA \d+s", screen)
    assert re.search(r"\[#{12}-{12}\] 2/4 finetune epoch, ETA \d+s", screen)
    assert "\r\x1b[2K    ok  ingest" in screen  # the status line is replaced by the result


def test_verbose_streams_everything_as_it_comes():
    terminal = io.StringIO()
    StepConsole(terminal, io.StringIO(), verbose=True, interactive=True).write(KFP_LINES)
    assert terminal.getvalue() == KFP_LINES


class ClosedPipe(io.StringIO):
    """A terminal whose reader went away after `lines` lines (`tlpipe run | head -1`)."""

    def __init__(self, lines: int):
        super().__init__()
        self.left = lines

    def write(self, text):
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= text.count("\n")
        return super().write(text)


@pytest.mark.parametrize("verbose", [False, True])
def test_a_reader_that_goes_away_drops_the_terminal_not_the_run(verbose):
    terminal, log = ClosedPipe(lines=1), io.StringIO()
    console = StepConsole(terminal, log, verbose=verbose, interactive=True, clock=Clock())
    for line in KFP_LINES.splitlines(keepends=True):  # no BrokenPipeError reaches kfp.local
        console.write(line)
    console.flush()
    assert log.getvalue() == KFP_LINES and console.terminal is None
    console.close()
    assert terminal.getvalue().count("\n") == 1


def test_progress_bar_and_durations():
    assert progress_bar("epochs", 0, 10, 0.0) == "[------------------------] 0/10 epochs"
    assert progress_bar("epochs", 10, 10, 50.0) == "[########################] 10/10 epochs"
    assert duration(42.4) == "42s" and duration(185) == "3m05s" and duration(3725) == "1h02m"


@pytest.mark.e2e
def test_a_run_in_a_terminal_shows_step_lines_and_a_live_progress_bar_and_keeps_its_folder(
        tmp_path):
    """The terminal view of a real `tlpipe run`, captured through a pseudo-terminal; a second
    run started into the same --output meanwhile is refused in one line before it writes
    anything, and the first finishes with its own summary and logs."""
    data = write_digits(tmp_path / "data")
    output = tmp_path / "out"
    exports = tmp_path / "exports.yaml"  # one variant each: the console is what is tested here
    exports.write_text("export: {tflite_variants: [fp16], onnx_variants: [fp16]}\n")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--data", str(data), "--output",
         str(output), *TINY, "--config", str(exports)], cwd=ROOT, stdin=terminal, stdout=terminal,
        stderr=terminal, env={**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "100"})
    os.close(terminal)
    screen, second = b"", None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if second is None and (output / ".tlpipe-run.lock").exists():
            second = start_tlpipe("run", "--data", data, "--output", output, *TINY)
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=60) == 0, screen.decode(errors="replace")[-3000:]
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert_one_line(err, f"--output {output} is in use by another tlpipe run (pid "
                    f"{process.pid}", "give another --output")
    text = screen.decode(errors="replace")
    lines = [re.sub(r".*\r(\x1b\[2K)?", "", line)  # what stays on screen of each line
             for line in text.replace("\r\n", "\n").split("\n")]
    steps = [line.split()[1] for line in lines if line.startswith("    ok  ")]
    # kfp.local runs quantize and tensorrt (both after evaluate) in either order
    assert steps[:6] == ["fingerprint", "ingest", "preprocess", "train-head", "finetune",
                         "evaluate"], text[-3000:]
    assert sorted(steps[6:8]) == ["quantize", "tensorrt"] and steps[8:] == ["report",
                                                                        "promote"], \
        text[-3000:]
    assert re.search(r"\[#+-*\] [12]/3 finetune epoch, ETA \d+", text), text[-3000:]
    assert "   ...  finetune" in text and "\r\x1b[2K" in text
    assert "Executing task" not in text and "executor_output" not in text
    assert "TEST ACCURACY" in text
    summary = json.load(open(output / "summary.json"))
    assert summary["status"] == "succeeded" and f"run: {summary['run_dir']}" in text
    assert len(os.listdir(output / "runs")) == 1 and not (output / ".tlpipe-run.lock").exists()
    console_log = os.path.join(summary["run_dir"], "logs", "console.log")
    assert "Executing task" in open(console_log).read()
    assert {"fingerprint.log", "evaluate.log"} <= set(os.listdir(os.path.dirname(console_log)))
