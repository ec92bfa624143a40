"""clrepro: sweep and reproduce continual-learning and continual-unlearning results."""

__version__ = "0.1.0"
