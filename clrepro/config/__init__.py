"""Configuration: Hydra composition, typed validation and registry-only instantiation."""
