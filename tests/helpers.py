"""Helpers shared by test modules (fixtures live in conftest.py)."""

import json
from pathlib import Path

from melanoma import paths
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


def write_train_outputs(model, run_id: str, model_uri: str, temperature: float = 1.0) -> None:
    """models/ as the train stage leaves it, for `model` logged in run_id as model_uri."""
    Path("models").mkdir(exist_ok=True)
    model.save(paths.MODEL_FILE)
    paths.RUN_FILE.write_text(
        json.dumps(
            {"run_id": run_id, "model_uri": model_uri, "image_size": 16, "temperature": temperature}
        )
    )
