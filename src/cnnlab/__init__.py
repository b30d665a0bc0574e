"""cnnlab: config-driven CNN experiment pipelines (DVC + Hydra + Lightning + MLflow)."""

__version__ = "0.1.0"
