"""The model (backbone + head), head training on cached features, and fine-tuning."""
