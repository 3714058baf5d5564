"""Each epoch's curves: Keras callbacks that time the epochs and log their metrics to the
active MLflow run, and what the run keeps of them (the fit summary of
reports/train_metrics.json, the one-value metrics, the curves' figure).
"""

import logging
import time

import keras
import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from melanoma.params.model import TrainParams
from melanoma.reports import EpochMetrics, FitSummary, TrainMetrics

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "accuracy", "val_accuracy", "loss", "val_loss", "learning_rate"]
# What Keras reports each epoch and we track; the learning rate is read from the optimizer.
EPOCH_METRICS = ["loss", "accuracy", "val_loss", "val_accuracy"]


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch, training and validation pass together."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.seconds.append(time.perf_counter() - self._started)


class EpochTracker(EpochTimer):
    """Logs each epoch's curves to the active MLflow run with step=epoch (1-based) and keeps them.

    It must come before ReduceLROnPlateau in the callback list, so that the learning rate it
    records is the one the epoch was trained with.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        super().on_epoch_end(epoch, logs)
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {name: float(logs[name]) for name in EPOCH_METRICS}
        row["learning_rate"] = learning_rate
        mlflow.log_metrics(row, step=epoch + 1)
        self.rows.append({"epoch": epoch + 1, **row})
        log.info(
            "epoch %d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f lr %.2g (%.1f s)",
            epoch + 1,
            row["loss"],
            row["accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            learning_rate,
            self.seconds[-1],
        )


def make_callbacks(params: TrainParams, tracker: EpochTracker) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [tracker]
    if params.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=params.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    if params.reduce_lr_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=params.reduce_lr_factor,
                patience=params.reduce_lr_patience,
            )
        )
    return callbacks


def training_summary(
    history: pd.DataFrame, seconds: list[float], train_images: int, early_stopping: bool
) -> FitSummary:
    """Final and best-epoch (lowest val_loss) metrics and the speed, for reports/train_metrics.json.

    The first epoch also traces the graph and fills the decoded-image cache, so the steady-state
    speed comes from the later epochs when there are any.
    """
    best = history.loc[history["val_loss"].idxmin()]
    final = history.iloc[-1]
    steady = seconds[1:] or seconds
    seconds_per_epoch = float(np.mean(steady))
    return FitSummary(
        epochs_run=len(history),
        final=EpochMetrics(**{name: float(final[name]) for name in EPOCH_METRICS}),
        best_epoch=int(best["epoch"]),
        best=EpochMetrics(**{name: float(best[name]) for name in EPOCH_METRICS}),
        # EarlyStopping(restore_best_weights=True) puts the best epoch's weights back at the end.
        saved_model_epoch=int(best["epoch"]) if early_stopping else int(final["epoch"]),
        train_images=train_images,
        first_epoch_seconds=seconds[0],
        seconds_per_epoch=seconds_per_epoch,
        images_per_second=train_images / seconds_per_epoch,
        training_seconds=float(np.sum(seconds)),
    )


# The validation metrics logged to MLflow; the rest of reports/train_metrics.json (macro F1,
# the best epoch, seconds per epoch, Brier scores) stays in the file: with the curves and
# evaluate's metrics, a run keeps to about 25 metrics, few enough to compare runs on at a glance.
TRACKED_VALIDATION_METRICS = ("accuracy", "balanced_accuracy", "melanoma_auc")


def summary_metrics(summary: TrainMetrics) -> dict[str, float]:
    """The run's one-value metrics: speed, calibration, the defined validation metrics and each
    source's validation melanoma AUC (its balanced accuracy is in train_metrics.json)."""
    validation = {name: getattr(summary.validation, name) for name in TRACKED_VALIDATION_METRICS}
    validation |= {
        f"{source}_melanoma_auc": figures.melanoma_auc
        for source, figures in summary.validation_per_source.items()
    }
    return {
        "images_per_second": summary.images_per_second,
        "temperature": summary.calibration.temperature,
        "validation_ece": summary.calibration.validation_ece,
    } | {f"validation_{name}": value for name, value in validation.items() if value is not None}


def plot_curves(history: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(history["epoch"], history[metric], marker="o", label=f"train {metric}")
        axes.plot(history["epoch"], history[f"val_{metric}"], marker="o", label=f"val {metric}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.legend()
    return figure
