"""Fit the model on the augmented manifest, with every epoch tracked in one MLflow run.

The run id travels in models/run.json (a DVC output, melanoma.reports.RunInfo), never as "the
latest run": DVC may restore `train` from its run cache without running it, and then no new
MLflow run exists.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.models.model import ModelInfo

from melanoma.config import Params, flatten
from melanoma.data.dataset import make_dataset, split_rows
from melanoma.data.manifest import (
    AUGMENTED_COLUMNS,
    file_sha256,
    images_per_source,
    read_manifest,
    read_sources_summary,
)
from melanoma.errors import MelanomaError
from melanoma.labels import LABELS
from melanoma.metrics import per_source_metrics, predictions_table, validation_metrics
from melanoma.model.architectures import (
    INPUT_NAME,
    build_model,
    build_trainable_part,
    copy_weights,
    frozen_part,
)
from melanoma.model.calibration import (
    calibration_metrics,
    fit_temperature,
    fold_temperature,
    rescale,
)
from melanoma.model.curves import (
    EPOCH_METRICS,
    HISTORY_COLUMNS,
    TRACKED_VALIDATION_METRICS,
    EpochTracker,
    make_callbacks,
    plot_curves,
    summary_metrics,
    training_summary,
)
from melanoma.model.ensemble import assemble
from melanoma.model.features import read_feature_cache
from melanoma.model.logged_model import log_keras_model
from melanoma.model.optimization import BackboneRate, compile_model, sample_weights
from melanoma.params.model import PreprocessParams, TrainParams
from melanoma.params.sites import UnfamiliarParams
from melanoma.reports import Calibration, RunInfo, TrainMetrics
from melanoma.sites.fitting import SiteReferences, fit_references
from melanoma.tracking import configure_tracking, experiment_run_tags, git_commit

log = logging.getLogger(__name__)


class BatchSizeError(MelanomaError, ValueError):
    """train.batch_size is larger than the training set: not one full batch to train on."""


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training run writes (the stage's: melanoma.paths.TRAIN_OUTPUTS, the outs, metrics
    and plots of dvc.yaml)."""

    model: Path
    unfamiliar: Path
    drift_reference: Path
    run_info: Path
    metrics: Path
    history: Path
    validation_predictions: Path


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def inference_copy(model: keras.Model) -> keras.Model:
    """An uncompiled copy of a trained model with the same weights: what is saved, so the
    saved file names no optimizer class of this package (MLflow's server and any Keras load
    it as is)."""
    # From the layer graph's config only: clone_model would also copy the compile config.
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def calibrate(
    model: keras.Model, params: TrainParams, val_labels: np.ndarray, val_probabilities: np.ndarray
) -> Calibration:
    """With calibration=temperature, fit T on the validation split and fold it into the model.

    Returns T (1.0: uncalibrated) and the validation ECE and Brier score before and after.
    """
    before = after = calibration_metrics(val_labels, val_probabilities)
    temperature = 1.0
    if params.calibration == "temperature":
        temperature = fit_temperature(val_labels, val_probabilities)
        fold_temperature(model, temperature)
        after = calibration_metrics(val_labels, rescale(val_probabilities, temperature))
    log.info(
        "calibration %s: temperature %.3f, validation ECE %.4f -> %.4f, Brier %.4f -> %.4f",
        params.calibration,
        temperature,
        before["ece"],
        after["ece"],
        before["brier"],
        after["brier"],
    )
    return Calibration(
        temperature=temperature,
        validation_ece_uncalibrated=before["ece"],
        validation_brier_uncalibrated=before["brier"],
        validation_ece=after["ece"],
        validation_brier=after["brier"],
    )


def feature_dataset(
    features: np.ndarray,
    label_indices: np.ndarray,
    batch_size: int,
    shuffle_seed: int | None = None,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of (cached features, one-hot labels[, sample weights]), shuffled as make_dataset
    shuffles images."""
    labels = tf.one_hot(label_indices, len(LABELS), dtype=tf.float32)
    rows = (features, labels) if weights is None else (features, labels, weights)
    dataset = tf.data.Dataset.from_tensor_slices(rows)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(features), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=shuffle_seed is not None).prefetch(2)


def saved_model(model: keras.Model, fitted: keras.Model) -> keras.Model:
    """The end-to-end model to save (uint8 image in, probabilities out).

    `fitted` is either `model` itself or the part trained on cached features or activations,
    whose weights then go into the model. A model compiled with a per-backbone learning rate
    is saved uncompiled (inference_copy).
    """
    if fitted is not model:
        copy_weights(fitted, model)
        return model
    if isinstance(model.optimizer, BackboneRate):
        return inference_copy(model)
    return model


def source_tags(sources: list[dict]) -> dict[str, str]:
    """MLflow tags naming what each data source held when the run trained: its content hash
    and how many of its files ingest accepted."""
    tags = {}
    for source in sources:
        tags[f"data.sources.{source['name']}.sha256"] = source["sha256"]
        tags[f"data.sources.{source['name']}.accepted"] = str(source["accepted"])
    return tags


@dataclass(frozen=True)
class Splits:
    """The augmented manifest and its train and validation images: paths and label indices."""

    manifest: pd.DataFrame
    train_paths: list[str]
    train_labels: np.ndarray
    val_paths: list[str]
    val_labels: np.ndarray
    val_sources: np.ndarray  # each validation image's data source: the per-source figures


def read_splits(manifest_path: Path, batch_size: int) -> Splits:
    """The train and val rows of the augmented manifest. Training batches are full batches
    only: fewer training images than one batch is an error."""
    manifest = read_manifest(manifest_path, AUGMENTED_COLUMNS)
    train_paths, train_labels = split_rows(manifest, "train", manifest_path)
    val_paths, val_labels = split_rows(manifest, "val", manifest_path)
    log.info("%d training and %d validation images", len(train_paths), len(val_paths))
    if len(train_paths) < batch_size:
        raise BatchSizeError(
            f"train.batch_size={batch_size} is larger than the {len(train_paths)} "
            f"training images of {manifest_path}"
        )
    val_sources = manifest.loc[manifest["split"] == "val", "source"].to_numpy()
    return Splits(manifest, train_paths, train_labels, val_paths, val_labels, val_sources)


@dataclass(frozen=True)
class FitSetup:
    """What the fit trains, compiled, and the batches it trains and validates on.

    `fitted` is `model` itself, or a smaller model trained on cached inputs (the head on the
    frozen backbone's features, or the top blocks and the head on the activations below them)
    whose weights `saved_model` then puts into `model`, the
    end-to-end model (uint8 image in, probabilities out) that is saved.
    """

    model: keras.Model
    fitted: keras.Model
    train: tf.data.Dataset
    val: tf.data.Dataset


def fit_setup(
    params: TrainParams, preprocess: PreprocessParams, splits: Splits, features_dir: Path
) -> FitSetup:
    """The whole model on images; or, with the backbone frozen (`train.freeze: all`) or its
    lower blocks (`n`), only the part that trains, on every view of what stage `features`
    cached in `features_dir`. Each training image weighs `sample_weights`."""
    model = build_model(params, preprocess)
    sources = splits.manifest.loc[splits.manifest["split"] == "train", "source"].to_numpy()
    weights = sample_weights(splits.train_labels, sources, params)
    if params.caches_features:
        paths_by_split = {"train": splits.train_paths, "val": splits.val_paths}
        cached = read_feature_cache(params, preprocess, paths_by_split, features_dir)
        views = cached["train"].shape[1]
        train_inputs = cached["train"].reshape(-1, *cached["train"].shape[2:])  # image-major
        train_ds = feature_dataset(
            train_inputs,
            np.repeat(splits.train_labels, views),
            params.batch_size,
            shuffle_seed=params.seed,
            weights=None if weights is None else np.repeat(weights, views),
        )
        val_ds = feature_dataset(cached["val"][:, 0], splits.val_labels, params.batch_size)
        fitted = build_trainable_part(params, train_inputs.shape[1:])
        copy_weights(model, fitted)
        steps_per_epoch = len(train_inputs) // params.batch_size
    else:
        train_ds = make_dataset(
            splits.train_paths,
            splits.train_labels,
            params.image_size,
            params.batch_size,
            shuffle_seed=params.seed,
            weights=weights,
        )
        val_ds = make_dataset(
            splits.val_paths, splits.val_labels, params.image_size, params.batch_size
        )
        fitted = model
        steps_per_epoch = len(splits.train_paths) // params.batch_size
    compile_model(fitted, params, steps_per_epoch)
    return FitSetup(model, fitted, train_ds, val_ds)


@dataclass(frozen=True)
class Trained:
    """The model to save (calibrated), its curves and metrics, and its validation
    probabilities."""

    model: keras.Model
    history: pd.DataFrame  # HISTORY_COLUMNS, one row per epoch
    metrics: TrainMetrics
    val_probabilities: np.ndarray
    site_references: SiteReferences  # the unfamiliar-image detector and the drift reference


@dataclass(frozen=True)
class Fit:
    """One fitted model: its curves (HISTORY_COLUMNS), each epoch's seconds and its validation
    probabilities (before calibration)."""

    history: pd.DataFrame
    seconds: list[float]
    val_probabilities: np.ndarray


def fit(params: TrainParams, setup: FitSetup) -> Fit:
    """Fit `setup.fitted`, each epoch logged to the active MLflow run."""
    tracker = EpochTracker()
    setup.fitted.fit(
        setup.train,
        validation_data=setup.val,
        epochs=params.epochs,
        shuffle=False,  # the dataset reshuffles itself, with the seed
        callbacks=make_callbacks(params, tracker),
        verbose=0,
    )
    history = pd.DataFrame(tracker.rows, columns=HISTORY_COLUMNS)
    return Fit(history, tracker.seconds, setup.fitted.predict(setup.val, verbose=0))


def fit_and_calibrate(
    params: TrainParams, unfamiliar: UnfamiliarParams, splits: Splits, setup: FitSetup
) -> Trained:
    """Fit (each epoch logged to the active MLflow run), then calibrate on the validation
    split and measure the saved model there: what params are chosen on, since only
    `evaluate` reads the test split. Last, what the saved model's sites need: the
    unfamiliar-image detector and the drift check's reference."""
    fitted = fit(params, setup)
    return calibrated(params, unfamiliar, splits, saved_model(setup.model, setup.fitted), fitted)


def calibrated(
    params: TrainParams,
    unfamiliar: UnfamiliarParams,
    splits: Splits,
    model: keras.Model,
    fitted: Fit,
) -> Trained:
    """`model` (whose uncalibrated validation probabilities `fitted` holds) calibrated, its
    validation metrics, and the unfamiliar-image detector and drift reference fitted on it."""
    fit_summary = training_summary(
        fitted.history,
        fitted.seconds,
        len(splits.train_paths),
        bool(params.early_stopping_patience),
    )
    val_probabilities = fitted.val_probabilities
    calibration = calibrate(model, params, splits.val_labels, val_probabilities)
    if calibration.temperature != 1.0:
        # What the calibrated model now gives (setup.val may hold cached features, not images).
        val_probabilities = rescale(val_probabilities, calibration.temperature)
    metrics = TrainMetrics(
        **fit_summary.to_dict(),
        calibration=calibration,
        validation=validation_metrics(splits.val_labels, val_probabilities),
        validation_per_source=per_source_metrics(
            splits.val_labels, val_probabilities, splits.val_sources
        ),
    )
    references = fit_references(
        model, splits.train_paths, splits.val_paths, unfamiliar, params.batch_size, params.seed
    )
    return Trained(model, fitted.history, metrics, val_probabilities, references)


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


def run_name(params: TrainParams) -> str:
    # A name of its own: MLflow draws its random names from Python's generator, which the seed
    # fixes, so every run of the same params would be called alike in the UI.
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{params.architecture} seed {params.seed} {started}"


def log_run_inputs(params: Params, manifest_path: Path, splits: Splits, sources_file: Path) -> None:
    """The params, what the run trained on (tags: commit, manifest and sources' hashes) and the
    images per source, into the active run."""
    mlflow.log_params(flatten(params))
    mlflow.set_tags(
        {
            "stage": "train",
            "git_commit": git_commit(),
            "data_manifest_sha256": file_sha256(manifest_path),
        }
        | source_tags(read_sources_summary(sources_file))
        | experiment_run_tags()
    )
    counts = images_per_source(splits.manifest).reset_index()
    mlflow.log_table(counts, "data/images_per_source.json")


def log_trained(trained: Trained, splits: Splits, image_size: int) -> ModelInfo:
    """The run's one-value metrics, its curves, the labels and the model (with one validation
    image as input example), into the active run."""
    mlflow.log_metrics(summary_metrics(trained.metrics))
    mlflow.log_figure(plot_curves(trained.history), "training_curves.png")
    mlflow.log_dict({"labels": list(LABELS)}, "labels.json")
    mlflow.log_metric("unfamiliar_threshold", trained.site_references.unfamiliar.threshold)
    example = next(iter(make_dataset(splits.val_paths[:1], splits.val_labels[:1], image_size, 1)))
    return log_keras_model(trained.model, example[0].numpy())


def write_outputs(
    outputs: TrainOutputs, trained: Trained, run_info: RunInfo, splits: Splits
) -> None:
    for path in vars(outputs).values():
        path.parent.mkdir(parents=True, exist_ok=True)
    trained.model.save(outputs.model)
    trained.site_references.unfamiliar.save(outputs.unfamiliar)
    trained.site_references.drift.save(outputs.drift_reference)
    run_info.write(outputs.run_info)
    trained.metrics.write(outputs.metrics)
    trained.history.to_csv(outputs.history, index=False)
    predictions_table(splits.val_paths, splits.val_labels, trained.val_probabilities).to_csv(
        outputs.validation_predictions, index=False
    )


def run_training(
    params: Params,
    manifest_path: Path,
    outputs: TrainOutputs,
    features_dir: Path,
    sources_file: Path,
) -> RunInfo:
    """Train on the train split, validate on val, track it all in one MLflow run; write outputs.

    With a frozen backbone (`train.freeze: all`) the head trains on the features cached in
    `features_dir` (stage `features`).
    With `train.ensemble: k` > 1, k members train (seeds train.seed, +1, ...), each in a
    nested run, and the saved model averages them (fit_ensemble).

    Returns the run info also written to `outputs.run_info`.
    """
    train = params.train
    set_determinism(train.seed)
    splits = read_splits(manifest_path, train.batch_size)
    if train.ensemble == 1:
        setup = fit_setup(train, params.preprocess, splits, features_dir)
    experiment_id = configure_tracking(params.mlflow)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name(train)) as run:
        log_run_inputs(params, manifest_path, splits, sources_file)
        if train.ensemble == 1:
            trained = fit_and_calibrate(train, params.unfamiliar, splits, setup)
        else:
            trained = fit_ensemble_and_calibrate(
                train, params.preprocess, params.unfamiliar, splits, features_dir
            )
        model_info = log_trained(trained, splits, train.image_size)
    run_info = RunInfo(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        model_uri=model_info.model_uri,
        tracking_uri=mlflow.get_tracking_uri(),
        labels=list(LABELS),
        image_size=train.image_size,
        temperature=trained.metrics.calibration.temperature,
    )
    write_outputs(outputs, trained, run_info, splits)
    metrics = trained.metrics
    log.info(
        "run %s: val accuracy %.4f, balanced accuracy %.4f, melanoma AUC %s (saved epoch %d), "
        "%.1f s/epoch, %.0f images/s",
        run.info.run_id,
        metrics.validation.accuracy,
        metrics.validation.balanced_accuracy,
        metrics.validation.melanoma_auc,
        metrics.saved_model_epoch,
        metrics.seconds_per_epoch,
        metrics.images_per_second,
    )
    return run_info
