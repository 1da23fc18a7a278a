"""What the user's terminal shows: native libraries' start-up notices held back."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def held_stderr():
    """Sends file descriptor 2 to a temporary file for the block: TensorFlow (at import) and
    LiteRT (at its first interpreter) write start-up notices there from C++, whatever
    TF_CPP_MIN_LOG_LEVEL says, which would bury a one-line error. What was held is written
    out after all if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def describe(error: BaseException, limit: int = 300) -> str:
    """The exception's type and message on one line (tarfile's and Keras's span several), the
    message cut to `limit` characters."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (5-12 s) with its start-up notices held back (see held_stderr)."""
    with held_stderr():
        import tensorflow  # noqa: F401
