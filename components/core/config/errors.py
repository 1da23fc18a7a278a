"""The error every invalid configuration value raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""
