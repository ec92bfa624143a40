"""Continual-learning metrics (docs/metrics/index.md) and the reference acc.csv schema."""
