"""Multi-worker fine-tuning: the strategy, local worker processes and cluster jobs."""
