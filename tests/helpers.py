"""Helpers shared by test modules (fixtures live in conftest.py)."""

from melanoma.config import TrainParams


def train_params(**overrides) -> TrainParams:
    """TrainParams of a tiny network trained for one epoch (simple_cnn, 32 px, one block of 4
    filters, batch 4, no early stopping or learning-rate reduction), with `overrides`."""
    values = {
        "architecture": "simple_cnn",
        "image_size": 32,
        "filters": [4],
        "dropout": 0.0,
        "learning_rate": 0.01,
        "batch_size": 4,
        "epochs": 1,
        "early_stopping_patience": 0,
        "reduce_lr_patience": 0,
    }
    return TrainParams(**{**values, **overrides})
