"""The run config: its dataclasses and presets, their validation, loading from YAML and dicts."""
