"""What a person sees while `tlpipe run` works: one line per step with its time and key figures,
and a progress bar with an ETA inside long steps when stdout is a terminal. Everything kfp.local
and the steps print (executor JSON, TensorFlow notices, worker lines) goes to a log file, and to
the terminal as well with --verbose.

`StepConsole` is the file object kfp.local's output is written to during a run (it prints with
`print` and logs to sys.stdout); it reads the step boundaries kfp.local prints and the progress
lines the steps log (`components.core.io.progress.Progress`: "LABEL: DONE/TOTAL (RATE/s)";
fine-tuning: "finetune epoch N/M: ...").
"""

from __future__ import annotations

import re
import time

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
PROGRESS = re.compile(r"(?:INFO|WARNING): (?P<label>[^:]{1,60}?):? (?P<done>\d+)/(?P<total>\d+)"
                      r"(?: \(|:)")
BAR_WIDTH = 24  # characters of the progress bar


class StepConsole:
    """A write-only text stream: every line goes to `log` (an open text file); with `verbose`
    also to `terminal` as it is; otherwise `terminal` gets one line per step as it ends
    ("figures(step)" adds its key figures), and, when `interactive` (a terminal), the running
    step's name, elapsed time and progress bar rewritten in place."""

    def __init__(self, terminal, log, verbose: bool, interactive: bool, figures=None,
                 clock=time.monotonic):
        self.terminal, self.log, self.verbose, self.interactive = terminal, log, verbose, \
            interactive
        self.figures, self.clock = figures or (lambda step: ""), clock
        self.pending, self.step, self.started, self.progress = "", "", 0.0, None
        self.shown = False  # a status line is on screen (to be overwritten)

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            self._show(text)
            return len(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._observe(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self._show("")

    def close(self) -> None:
        """Ends the status line, if shown, and closes the log."""
        if self.pending:
            self.write("\n")
        self._clear()
        self.log.close()

    def isatty(self) -> bool:
        return False  # what kfp.local writes here is not for a terminal

    def _observe(self, line: str) -> None:
        started, finished, progress = (STARTED.search(line), FINISHED.search(line),
                                       PROGRESS.search(line))
        if started:
            self.step, self.started, self.progress = started.group(1), self.clock(), None
            self._status()
        elif finished:
            self._end(finished.group(1), finished.group(2))
        elif progress and self.step:
            self.progress = (progress.group("label").strip(), int(progress.group("done")),
                             int(progress.group("total")), self.clock())
            self._status()

    def _end(self, step: str, status: str) -> None:
        seconds = self.clock() - self.started
        mark = "ok" if status == "SUCCESS" else status.lower()
        figures = self.figures(step) if status == "SUCCESS" else ""
        self._clear()
        self._show(f"{mark:>6}  {step:<11} {seconds:6.1f} s"
                   + (f"  {figures}" if figures else "") + "\n")
        self.step = ""

    def _status(self) -> None:
        if not self.interactive:
            return
        line = f"   ...  {self.step:<11} {self.clock() - self.started:6.1f} s"
        if self.progress:
            line += "  " + progress_bar(*self.progress[:3], self.progress[3] - self.started)
        self._clear()
        self._show(line)
        self.shown = True

    def _clear(self) -> None:
        if self.shown:
            self._show("\r\x1b[2K")
            self.shown = False

    def _show(self, text: str) -> None:
        """Writes `text` to the terminal and flushes. Once the terminal's reader is gone (`tlpipe
        run | head -3`: a closed pipe) it is dropped: the run goes on, its log file whole."""
        if self.terminal is None:
            return
        try:
            self.terminal.write(text)
            self.terminal.flush()
        except BrokenPipeError:
            self.terminal = None


def progress_bar(label: str, done: int, total: int, elapsed: float) -> str:
    """"[#####-----] 12/28 LABEL, ETA 1m05s": the ETA extrapolates the elapsed seconds at the
    rate so far (none before the first unit is done)."""
    total = max(total, 1)
    filled = min(BAR_WIDTH, round(BAR_WIDTH * done / total))
    eta = ""
    if 0 < done < total:
        eta = f", ETA {duration(elapsed / done * (total - done))}"
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} {label}{eta}"


def duration(seconds: float) -> str:
    """"42s", "3m05s", "1h02m"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
