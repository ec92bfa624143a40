"""Continual-learning metrics (metrics.md §1) and the reference acc.csv schema (§4.2)."""
