"""A training run: fit the model on the augmented manifest, with every epoch tracked in one
MLflow run, and write the stage's outputs.

The run id travels in models/run.json (a DVC output, melanoma.reports.RunInfo), never as "the
latest run": DVC may restore `train` from its run cache without running it, and then no new
MLflow run exists.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.models.model import ModelInfo

from melanoma.config import Params, flatten
from melanoma.data.dataset import make_dataset
from melanoma.data.manifest import (
    file_sha256,
    images_per_source,
    read_sources_summary,
)
from melanoma.labels import LABELS
from melanoma.metrics import predictions_table
from melanoma.model.curves import (
    plot_curves,
    summary_metrics,
)
from melanoma.model.logged_model import log_keras_model
from melanoma.params.model import TrainParams
from melanoma.reports import RunInfo
from melanoma.tracking import configure_tracking, experiment_run_tags, git_commit
from melanoma.training.ensemble import fit_ensemble_and_calibrate
from melanoma.training.fitting import (
    Splits,
    Trained,
    fit_and_calibrate,
    fit_setup,
    read_splits,
    set_determinism,
)

log = logging.getLogger(__name__)


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


def source_tags(sources: list[dict]) -> dict[str, str]:
    """MLflow tags naming what each data source held when the run trained: its content hash
    and how many of its files ingest accepted."""
    tags = {}
    for source in sources:
        tags[f"data.sources.{source['name']}.sha256"] = source["sha256"]
        tags[f"data.sources.{source['name']}.accepted"] = str(source["accepted"])
    return tags


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
