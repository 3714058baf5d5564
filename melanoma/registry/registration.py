"""Stage `register`'s logic: what `evaluate` wrote goes to the model's MLflow run, the model gets
its registry version (one per trained model) and the promotion decision.

The challenger's probabilities are those of evaluate's predictions files; the champion is scored
again on the same images and rounded as those files round, so the two are compared alike (the
same model scored twice ties exactly).
"""

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow import MlflowClient

from melanoma.config import Params, flatten
from melanoma.evaluation.card_facts import CardFiles, card_facts
from melanoma.evaluation.external import read_external_sets
from melanoma.evaluation.model_card import metrics_table, registry_description
from melanoma.evaluation.report import (
    EvaluationSet,
    evaluation_lineage,
    evaluation_sets,
    tracked_metrics,
    validation_scores,
)
from melanoma.inference.views import views_of, with_views
from melanoma.labels import MELANOMA_INDEX
from melanoma.metrics import read_predictions
from melanoma.registry.promotion import (
    KEPT,
    PROMOTED,
    TRAINED_MODEL_TAG,
    VIEWS_TAG,
    RegistryError,
    ScoredImages,
    champion_probabilities,
    register_and_decide,
    registered_source,
    source_run,
    version_tags,
)
from melanoma.registry.serving import log_served_model, serving_config
from melanoma.registry.sites import refresh_card_sites
from melanoma.reports import MetricsReport, RunInfo
from melanoma.sites.drift import DriftReference
from melanoma.tracking import configure_tracking

log = logging.getLogger(__name__)

# The per-class figures and interval bounds of every set, one table (not metrics) in the run.
METRICS_TABLE_ARTIFACT = "evaluation/figures.json"
# The digits of the probabilities in evaluate's predictions files.
PROBABILITY_DIGITS = 6


@dataclass(frozen=True)
class Registration:
    """reports/registration.json: the version `register` made or found, and its decision."""

    model_name: str
    version: str
    decision: str  # promoted | kept
    reason: str
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class EvaluatedFiles:
    """What `train` and `evaluate` wrote that registration reads or logs (the stage names them,
    from melanoma.paths)."""

    run_file: Path
    metrics_file: Path
    model_file: Path
    unfamiliar_file: Path
    drift_reference_file: Path
    validation_predictions: Path
    ingested_manifest: Path  # the collection the external sets are checked against
    augmented_manifest: Path
    predictions: Callable[[str], Path]  # an evaluation set's predictions file, by set name
    logged: tuple[Path, ...]  # evaluate's files logged into the run's evaluation/
    plots_dir: Path
    external_dir: Path  # logged into evaluation/external if it is there
    card: CardFiles


def evaluated_images(files: EvaluatedFiles, set_names: list[str]) -> ScoredImages:
    """The images of every evaluation set with the challenger's probabilities, as evaluate's
    predictions files hold them (every image, the threshold-choosing half included)."""
    parts = [(name, *read_predictions(files.predictions(name))) for name in set_names]
    return ScoredImages(
        label_indices=np.concatenate([label_indices for _, label_indices, _ in parts]),
        probabilities=np.concatenate([probabilities for _, _, probabilities in parts]),
        sets=np.concatenate([[name] * len(label_indices) for name, label_indices, _ in parts]),
    )


def champion_scorer(
    params: Params, files: EvaluatedFiles, images: ScoredImages
) -> Callable[[str], np.ndarray | None]:
    """score_champion for register_and_decide: the champion's probabilities on evaluate's images
    (the external sets ingested again, into a scratch folder), or None if it cannot be loaded."""

    def score(champion_uri: str) -> np.ndarray | None:
        with tempfile.TemporaryDirectory(prefix="external-") as scratch:
            external = read_external_sets(
                params.evaluate.external_sets, params.ingest, Path(scratch), files.ingested_manifest
            )
            sets = evaluation_sets(external, files.augmented_manifest)
            check_same_images(sets, images, files.predictions)
            probabilities = champion_probabilities(
                champion_uri,
                [path for s in sets for path in s.paths],
                images.label_indices,
                params.train.batch_size,
            )
        return None if probabilities is None else probabilities.round(PROBABILITY_DIGITS)

    return score


def check_same_images(
    sets: list[EvaluationSet], images: ScoredImages, predictions_file: Callable[[str], Path]
) -> None:
    for evaluation_set in sets:
        listed = images.label_indices[images.sets == evaluation_set.name]
        if not np.array_equal(listed, evaluation_set.label_indices):
            raise RegistryError(
                f"{predictions_file(evaluation_set.name)} does not list the images of set "
                f"{evaluation_set.name} as they are now: run `evaluate` again"
            )


def log_evaluation(params: Params, report: MetricsReport, files: EvaluatedFiles) -> None:
    """evaluate's figures, plots and card, into the active run."""
    # Tags, not params: evaluate may run again on the same training run with other values.
    mlflow.set_tags(
        flatten(params.evaluate, "evaluate.")
        | flatten(params.registry, "registry.")
        | {"evaluate.warnings": "; ".join(report.warnings) or "none"}
    )
    mlflow.log_metrics(tracked_metrics(report))
    # log_dict, not log_table: log_table appends to an existing file, and evaluate may run
    # again on the same run. The content is log_table's: {"columns": [...], "data": [...]}.
    mlflow.log_dict(metrics_table(report), METRICS_TABLE_ARTIFACT)
    for path in files.logged:
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    mlflow.log_artifacts(str(files.plots_dir), artifact_path="evaluation")
    if files.external_dir.is_dir():
        mlflow.log_artifacts(str(files.external_dir), artifact_path="evaluation/external")


def log_served(
    params: Params, report: MetricsReport, files: EvaluatedFiles, example_file: Path
) -> str:
    """Log the served model of the trained model file, with `predict.views` test-time views
    (the graph evaluate scored with) and the report's threshold, into the active run; return
    its model URI."""
    model = with_views(keras.saving.load_model(files.model_file), params.predict.views)
    threshold = report.operating_point.threshold
    config = serving_config(params, threshold)
    with tempfile.TemporaryDirectory(prefix="drift-") as scratch:
        drift = drift_reference_file(model, params.train.batch_size, files, Path(scratch))
        stored = [files.unfamiliar_file, drift]
        return log_served_model(model, config, example_file, stored).model_uri


def drift_reference_file(
    model: keras.Model, batch_size: int, files: EvaluatedFiles, scratch: Path
) -> Path:
    """The drift reference of the served model: train's (models/drift_reference.npz) for a
    model without test-time views; with views, its P(melanoma) replaced by the validation
    split's averaged ones (what the served model answers), its features (the image itself)
    kept, written to `scratch` under the same name."""
    if views_of(model) == 1:
        return files.drift_reference_file
    reference = DriftReference.load(files.drift_reference_file)
    _, probabilities = validation_scores(model, files.validation_predictions, batch_size)
    if len(probabilities) != len(reference.melanoma):
        raise RegistryError(
            f"{files.validation_predictions} holds {len(probabilities)} validation images, "
            f"{files.drift_reference_file} {len(reference.melanoma)}: run `dvc repro train`"
        )
    averaged = DriftReference(probabilities[:, MELANOMA_INDEX], reference.features)
    averaged.save(scratch / files.drift_reference_file.name)
    return scratch / files.drift_reference_file.name


def register_evaluated_model(
    params: Params, git_commit: str, files: EvaluatedFiles
) -> Registration:
    """Log the evaluation to the model's run, give the model its version with the model card as
    description, and decide its promotion against the champion."""
    run_info = RunInfo.read(files.run_file)
    report = MetricsReport.read(files.metrics_file)
    experiment_id = configure_tracking(params.mlflow)
    test = evaluation_sets([], files.augmented_manifest)[0]
    run_id, model_uri = source_run(run_info, experiment_id, files.model_file, test.paths[0])
    lineage = evaluation_lineage(git_commit, test, files.augmented_manifest)
    facts = card_facts(
        params,
        report,
        run_info.model_copy(update={"run_id": run_id, "model_uri": model_uri}),
        lineage,
        files.card,
    )
    images = evaluated_images(files, [name for name, _ in report.sections()])
    tags = version_tags(
        report,
        run_id,
        lineage.test_images_sha256,
        lineage.augmented_manifest_sha256,
        lineage.git_commit,
    ) | {TRAINED_MODEL_TAG: model_uri, VIEWS_TAG: str(params.predict.views)}
    with mlflow.start_run(run_id=run_id):
        log_evaluation(params, report, files)
        # What the version points to is the served model, which carries the alert threshold:
        # logged once per trained model and threshold, registered again on a re-run.
        served_uri = registered_source(
            MlflowClient(), params.registry.model_name, run_id, tags
        ) or log_served(params, report, files, Path(test.paths[0]))
        version, decision = register_and_decide(
            served_uri,
            run_id,
            params.registry,
            registry_description(facts),
            tags,
            images,
            champion_scorer(params, files, images),
        )
        # A re-registered version keeps its sites in its card.
        refresh_card_sites(MlflowClient(), params.registry.model_name, version)
        registration = Registration(
            model_name=params.registry.model_name,
            version=version,
            decision=PROMOTED if decision.promote else KEPT,
            reason=decision.reason,
            run_id=run_id,
            model_uri=served_uri,
        )
        mlflow.set_tags(
            {
                "registry.version": version,
                "registry.decision": registration.decision,
                "registry.reason": decision.reason,
            }
        )
    return registration


def write_registration(registration: Registration, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(registration), indent=2) + "\n")
