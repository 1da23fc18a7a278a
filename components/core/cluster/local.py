"""Local multi-worker fine-tuning: worker processes on this machine.

`launch_local` runs N copies of a worker command on 127.0.0.1 (free ports, one TF_CONFIG each),
streams their output with a `[worker i]` prefix, bounds start-up and run time, and kills every
process it started when one fails (SIGKILL: TensorFlow catches SIGTERM). `launch_with_restarts`
starts the whole group again after a worker was lost, which resumes from the workers' backups.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from components.core.cluster.distribute import READY, WorkerFailure

START_TIMEOUT_SECONDS = 300  # a worker whose peer never starts would wait 10+ minutes

POLL_SECONDS = 0.2


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (held open together while picked,
    so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def local_tf_configs(ports: list[int]) -> list[str]:
    """One TF_CONFIG per worker of a cluster of workers on 127.0.0.1 at `ports`."""
    workers = [f"127.0.0.1:{port}" for port in ports]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                 "index": index}})
            for index in range(len(ports))]


def launch_local(command: list[str], workers: int, *, timeout_seconds: float = 0,
                 start_timeout_seconds: float = START_TIMEOUT_SECONDS, env: dict | None = None,
                 output=None, on_start=None) -> None:
    """Runs `command` as `workers` processes (>= 1) that form one TF_CONFIG cluster on
    127.0.0.1, and returns when all exit with status 0.

    Each line a worker prints is written to `output` (default sys.stdout) as "[worker i] ...".
    Every worker must log READY within `start_timeout_seconds` (seconds; a peer that never
    starts otherwise blocks the others in the strategy constructor for 10+ minutes), and the
    group must finish within `timeout_seconds` (0: no limit). on_start(processes) is called
    with the started `subprocess.Popen` list (tests use it to kill one).
    Raises WorkerFailure naming the first worker that failed and the error it ended with (its
    whole output is in `output`); every process still running is killed with SIGKILL first.
    """
    output = output or sys.stdout
    base = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    processes, readers, tails = [], [], []
    ready = [threading.Event() for _ in range(workers)]
    lock = threading.Lock()
    try:
        for index, tf_config in enumerate(local_tf_configs(free_ports(workers))):
            process = subprocess.Popen(command, env={**base, "TF_CONFIG": tf_config},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", start_new_session=True)
            processes.append(process)
            tails.append(deque(maxlen=40))
            readers.append(threading.Thread(target=_relay, daemon=True, args=(
                process.stdout, f"[worker {index}] ", output, lock, tails[index],
                ready[index])))
            readers[-1].start()
        if on_start is not None:
            on_start(processes)
        _wait(processes, ready, tails, timeout_seconds, start_timeout_seconds)
    finally:
        for process in processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended since poll()
                    pass
        for process in processes:
            process.wait()
        for reader in readers:
            reader.join(timeout=10)


def _relay(stream, prefix: str, output, lock, tail: deque, ready: threading.Event) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))
        if READY in line:
            ready.set()
        with lock:
            output.write(prefix + line)
            output.flush()


def _wait(processes, ready, tails, timeout_seconds: float, start_timeout_seconds: float):
    started = time.monotonic()
    while True:
        codes = [process.poll() for process in processes]
        failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index, code = failed[0], codes[failed[0]]
            time.sleep(POLL_SECONDS)  # let the reader take the worker's last lines
            if code < 0:  # lost to a signal (out of memory, preempted): another start may work
                raise WorkerFailure(f"worker {index} exited with status {code}"
                                    f"{_signal_name(code)}")
            raise WorkerFailure(f"worker {index} exited with status {code}: "
                                f"{error_line(tails[index])}", retryable=False)
        if all(code == 0 for code in codes):
            return
        elapsed = time.monotonic() - started
        late = [index for index, event in enumerate(ready) if not event.is_set()]
        if late and elapsed > start_timeout_seconds:
            raise WorkerFailure(
                f"worker(s) {late} did not join the cluster within {start_timeout_seconds:g} s "
                "(a peer that never starts blocks the others); check their logs above")
        if timeout_seconds and elapsed > timeout_seconds:
            raise WorkerFailure(f"the workers did not finish within {timeout_seconds:g} s")
        time.sleep(POLL_SECONDS)


ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Failure)\b.*")


def error_line(lines) -> str:
    """The error a worker ended with, from its last output lines: the last line shaped like
    Python's "SomeError: message" (the end of a traceback), else the last non-empty line."""
    lines = [line.strip() for line in lines if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    return (errors or lines or ["(no output)"])[-1]


def _signal_name(code: int) -> str:
    if code >= 0:
        return ""
    try:
        return f" (killed by {signal.Signals(-code).name})"
    except ValueError:
        return f" (killed by signal {-code})"


def launch_with_restarts(launch, restarts: int, log=print) -> int:
    """Calls `launch()` (a group start such as `launch_local`) and, after a retryable
    WorkerFailure, starts it again up to `restarts` times (>= 0); the workers resume from their
    backups. A worker that raised an error is not retried: it would fail the same way.
    Returns the restarts used; re-raises the last failure."""
    attempt = 0
    while True:
        try:
            launch()
            return attempt
        except WorkerFailure as failure:
            if attempt >= restarts or not failure.retryable:
                raise
            attempt += 1
            log(f"worker group failed ({failure}); restart {attempt} of {restarts}")
