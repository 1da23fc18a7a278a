"""TensorBoard scalar events written directly, without tf.summary."""

from __future__ import annotations

import os
import time


def scalar_writer(log_dir: str | None, run: str):
    """A TensorBoard event writer for `<log_dir>/<run>`, or None without a log_dir.

    TensorBoard's own writer (the one PyTorch's SummaryWriter uses), not tf.summary: an eager
    tf.summary op costs about a millisecond, and the head search logs hundreds of points in
    less time than that would take."""
    if not log_dir:
        return None
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    return EventFileWriter(os.path.join(log_dir, run))


def write_scalars(writer, step: int, figures: dict[str, float]) -> None:
    """One event of scalar summaries {tag: value} at `step`."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in figures.items()]
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                     summary=summary_pb2.Summary(value=values)))
