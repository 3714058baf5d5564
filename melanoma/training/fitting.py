"""One model fitted and calibrated on the augmented manifest's train and validation rows: the
whole model on images, or the part that trains on stage `features`' cached inputs; its
validation metrics and what the sites need (the unfamiliar-image detector, the drift
reference)."""

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from melanoma.data.dataset import make_dataset, split_rows
from melanoma.data.manifest import (
    AUGMENTED_COLUMNS,
    read_manifest,
)
from melanoma.errors import MelanomaError
from melanoma.labels import LABELS
from melanoma.metrics import per_source_metrics, validation_metrics
from melanoma.model.architectures import (
    build_model,
    build_trainable_part,
    copy_weights,
)
from melanoma.model.calibration import (
    calibration_metrics,
    fit_temperature,
    fold_temperature,
    rescale,
)
from melanoma.model.curves import (
    HISTORY_COLUMNS,
    EpochTracker,
    make_callbacks,
    training_summary,
)
from melanoma.model.features import read_feature_cache
from melanoma.model.optimization import BackboneRate, compile_model, sample_weights
from melanoma.params.model import PreprocessParams, TrainParams
from melanoma.params.sites import UnfamiliarParams
from melanoma.reports import Calibration, TrainMetrics
from melanoma.sites.fitting import SiteReferences, fit_references

log = logging.getLogger(__name__)


class BatchSizeError(MelanomaError, ValueError):
    """train.batch_size is larger than the training set: not one full batch to train on."""


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
