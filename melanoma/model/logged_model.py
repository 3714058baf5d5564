"""The trained Keras model logged to MLflow: keras flavor, signature, input example and pinned
pip requirements. `train` logs its model this way, and so does `register` when the training run
is not in its tracking store; the served model lists the same requirements.
"""

import os
from importlib.metadata import version
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.model import ModelInfo

MODEL_ARTIFACT = "model"


def _save_keras_model(path: str, **kwargs) -> None:
    # mlflow.keras.save_model writes the input example before it creates `path`, so log_model
    # with an input example fails (mlflow/mlflow#16183, still open in 3.17); creating the
    # directory first is the fix proposed there.
    os.makedirs(path)
    mlflow.keras.save_model(path=path, **kwargs)


# mlflow.keras with the directory fix above; MLflow names the flavor after __name__.
_KERAS_FLAVOR = SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_model)


def log_keras_model(model: keras.Model, example: np.ndarray) -> ModelInfo:
    """Log the model (keras flavor) with its uint8-image -> probabilities signature and example.

    This is `mlflow.keras.log_model(model, name=..., signature=..., input_example=...)`, which
    cannot be called as is with an input example (see _save_keras_model).
    """
    # A direct call (inference mode, as `predict`): for one example, tracing `predict` would
    # cost more than the call itself (1.4 s against 0.2 s for a 32 px Lite0).
    output = keras.ops.convert_to_numpy(model(example, training=False))
    signature: ModelSignature = infer_signature(example, output)
    return Model.log(
        artifact_path=None,
        name=MODEL_ARTIFACT,
        flavor=_KERAS_FLAVOR,
        model=model,
        signature=signature,
        input_example=example,
        pip_requirements=model_requirements(),
    )


def model_requirements() -> list[str]:
    """The pip requirements logged with a model. Listing them skips MLflow's requirement
    inference, which reloads the model in a subprocess (tens of seconds)."""
    return [
        f"keras=={keras.__version__}",
        f"tensorflow-cpu=={version('tensorflow-cpu')}",
        f"mlflow=={mlflow.__version__}",
        f"pillow=={version('pillow')}",
    ]
