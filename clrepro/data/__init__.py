"""Data: image sources and continual-learning benchmarks as per-task tensors."""
