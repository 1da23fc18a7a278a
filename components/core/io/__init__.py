"""Storage (local paths and gs://, atomic writes), progress lines and console output."""
