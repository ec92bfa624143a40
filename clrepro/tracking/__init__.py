"""Tracking: run records (manifest, config hash), output folders and plots; MLflow comes with the sweep."""
