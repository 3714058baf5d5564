"""An ensemble of `train.ensemble` members (seeds train.seed, +1, ...), each fitted as one model
is (melanoma.training.fitting) in a nested MLflow run, assembled into one model and calibrated
once."""

import logging
from pathlib import Path

import keras
import mlflow
import numpy as np

from melanoma.metrics import validation_metrics
from melanoma.model.architectures import (
    INPUT_NAME,
    frozen_part,
)
from melanoma.model.curves import (
    EPOCH_METRICS,
    HISTORY_COLUMNS,
    TRACKED_VALIDATION_METRICS,
)
from melanoma.model.ensemble import assemble
from melanoma.params.model import PreprocessParams, TrainParams
from melanoma.params.sites import UnfamiliarParams
from melanoma.training.fitting import (
    Fit,
    Splits,
    Trained,
    calibrated,
    fit,
    fit_setup,
    saved_model,
    set_determinism,
)

log = logging.getLogger(__name__)


def member_params(params: TrainParams, index: int) -> TrainParams:
    """The train params of ensemble member `index`: the seed is train.seed + index."""
    return params.model_copy(update={"seed": params.seed + index})


def fit_ensemble(
    params: TrainParams, preprocess: PreprocessParams, splits: Splits, features_dir: Path
) -> tuple[keras.Model, Fit]:
    """Fit the `params.ensemble` members one after the other, each with its own seed (its
    initial head, dropout and shuffling) on the same cached activations, its curves in a
    nested MLflow run of the active run; then assemble them into one model
    (melanoma.model.ensemble). The returned Fit holds the members' mean curves, the seconds of
    all members per epoch and the mean of their validation probabilities."""
    members, fits, base = [], [], None
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("fit_ensemble logs each member in a nested run of the active run")
    experiment = run.info.experiment_id
    for index in range(params.ensemble):
        member = member_params(params, index)
        set_determinism(member.seed)
        setup = fit_setup(member, preprocess, splits, features_dir)
        name = f"member {index} seed {member.seed}"
        # In the parent's experiment (start_run alone would use the default experiment).
        with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment):
            mlflow.set_tags(
                {"stage": "train", "ensemble_member": str(index), "seed": str(member.seed)}
            )
            fitted = fit(member, setup)
            validation = validation_metrics(splits.val_labels, fitted.val_probabilities)
            mlflow.log_metrics(
                {
                    f"validation_{metric}": value
                    for metric in TRACKED_VALIDATION_METRICS
                    if (value := validation[metric]) is not None
                }
            )
        if params.caches_features:
            # The trained part alone: the frozen part is the same in every member.
            base = setup.model if base is None else base
            members.append(setup.fitted)
        else:
            members.append(saved_model(setup.model, setup.fitted))
        fits.append(fitted)
        del setup  # its datasets hold a copy of the cached activations
    if base is None:
        inputs = keras.Input(
            members[0].input_shape[1:], dtype=members[0].inputs[0].dtype, name=INPUT_NAME
        )
        model = assemble(inputs, inputs, members, f"{params.architecture}_ensemble")
    else:
        frozen = frozen_part(base, params)
        model = assemble(
            frozen.inputs, frozen.outputs[0], members, f"{params.architecture}_ensemble"
        )
    log.info(
        "ensemble of %d members: %d weights (one member alone: %d)",
        len(members),
        model.count_params(),
        (members[0] if base is None else base).count_params(),
    )
    return model, _mean_fit(fits)


def _mean_fit(fits: list[Fit]) -> Fit:
    """The members' curves averaged epoch by epoch (over the epochs every member ran), the
    seconds of each such epoch summed over the members, the mean validation probabilities."""
    epochs = min(len(f.history) for f in fits)
    history = sum(f.history.iloc[:epochs].reset_index(drop=True) for f in fits) / len(fits)
    history["epoch"] = range(1, epochs + 1)
    seconds = [float(sum(f.seconds[e] for f in fits)) for e in range(epochs)]
    probabilities = np.mean([f.val_probabilities for f in fits], axis=0)
    return Fit(history[HISTORY_COLUMNS], seconds, probabilities)


def fit_ensemble_and_calibrate(
    params: TrainParams,
    preprocess: PreprocessParams,
    unfamiliar: UnfamiliarParams,
    splits: Splits,
    features_dir: Path,
) -> Trained:
    """fit_ensemble, the members' mean curves logged to the active (parent) run as one model's
    are, then the ensemble calibrated once on its validation probabilities (calibrated)."""
    model, fitted = fit_ensemble(params, preprocess, splits, features_dir)
    for row in fitted.history.to_dict("records"):
        mlflow.log_metrics(
            {name: float(row[name]) for name in [*EPOCH_METRICS, "learning_rate"]},
            step=int(row["epoch"]),
        )
    mlflow.set_tag("ensemble", str(params.ensemble))
    return calibrated(params, unfamiliar, splits, model, fitted)
