"""Sweeps: Ray Tune drives an Optuna search over multi-seed trials, every run logged to MLflow."""
