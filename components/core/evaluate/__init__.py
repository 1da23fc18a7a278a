"""Test metrics, the blessing decision, the report and model card, and predict."""
