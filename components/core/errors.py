"""The errors tlpipe raises on purpose, by whose move it is to fix them.

`tlpipe` exits 2 on an `InputError` (the user's input cannot be used, found before any work or
by a step) and 1 on a `StepError` (work that started failed: a step, a worker group, a cluster
call). Any other exception is a bug in tlpipe and is reported as one. Both keep the built-in
base a caller would catch (ValueError, RuntimeError).
"""

from __future__ import annotations


class TlpipeError(Exception):
    """An error tlpipe raises on purpose; its message names the problem and the fix."""


class InputError(TlpipeError, ValueError):
    """The user's input (arguments, config, data, weights, model files, output or registry
    folder) cannot be used: exit 2."""


class StepError(TlpipeError, RuntimeError):
    """Work that started failed (a pipeline step, the workers, a cluster call): exit 1."""


class ConfigError(InputError):
    """A configuration value is invalid; the message names the field and the fix."""
