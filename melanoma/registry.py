"""The MLflow model registry: one version per evaluated model, the `champion` alias for the best.

Promotion uses aliases only (registry stages are deprecated). Which versions held the alias, in
order, is kept in the registered model's tag `champion_history` (a JSON list, oldest first), so
`rollback` can return to the previous champion and be repeated.
"""

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from melanoma.config import RegistryParams
from melanoma.dataset import make_dataset
from melanoma.metrics import HEADLINE_METRICS, evaluation_metrics
from melanoma.predict import (
    ModelLoadError,
    load_model,
    model_input_size,
    predict_split,
)
from melanoma.training import log_keras_model

log = logging.getLogger(__name__)

CHAMPION = "champion"
HISTORY_TAG = "champion_history"
DECISION_TAG = "promotion_decision"  # promoted | kept: what evaluate decided for the version
REASON_TAG = "promotion_reason"
MANUAL_TAG = "champion_set_by_hand"  # when and how a person moved the alias to this version
PROMOTED, KEPT = "promoted", "kept"
# In floating point 0.72 - 0.70 < 0.02: a margin met exactly must not fail on the last bit.
TOLERANCE = 1e-9
RUN_INFO_KEYS = ("run_id", "model_uri", "image_size")
SOURCE_RUN_TAG = "source_run_id"


class RegistryError(Exception):
    """A registry action cannot be done; the message says why."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def read_run_info(path: Path) -> dict:
    """models/run.json, written by the train stage: which MLflow run and logged model it made."""
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RegistryError(
            f"{path}: cannot be read as JSON ({error}); run the train stage"
        ) from None
    missing = [key for key in RUN_INFO_KEYS if key not in info]
    if missing:
        raise RegistryError(f"{path} lacks {missing}: it was not written by the train stage")
    return info


def source_run(
    run_info: dict, experiment_id: str, model_file: Path, example_image: str
) -> tuple[str, str]:
    """(run id, model URI) to evaluate into: the training run of run_info if this store has it.

    A fresh store, or a train stage that DVC restored from its run cache, has no such run: then
    a new run, tagged with the missing run id, gets the model file logged (as train logs it, with
    `example_image` as input example), and is used instead.
    """
    try:
        mlflow.get_run(run_info["run_id"])
        return run_info["run_id"], run_info["model_uri"]
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    log.warning(
        "training run %s is not in the tracking store %s: logging %s into a new run",
        run_info["run_id"],
        mlflow.get_tracking_uri(),
        model_file,
    )
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name="evaluate (training run not in this store)",
        tags={SOURCE_RUN_TAG: run_info["run_id"]},
    ) as run:
        model = keras.saving.load_model(model_file)
        example = make_dataset([example_image], np.zeros(1, np.int32), model_input_size(model), 1)
        model_uri = log_keras_model(model, next(iter(example))[0].numpy()).model_uri
    return run.info.run_id, model_uri


def score_model(
    model_uri: str,
    paths: Sequence[str],
    true: np.ndarray,
    threshold: float,
    metric: str,
    batch_size: int,
) -> float | None:
    """`metric` of the model at model_uri on these test images; None if it cannot be loaded."""
    try:
        model = load_model(model_uri)
    except ModelLoadError as error:
        log.warning("%s", error)
        return None
    probabilities = predict_split(model, paths, true, batch_size)
    return evaluation_metrics(true, probabilities, threshold)[metric]


def version_tags(
    report: dict, run_id: str, test_data_sha256: str, manifest_sha256: str, git_commit: str
) -> dict[str, str]:
    """What a registry user needs to trust a version: its test figures and what produced it."""
    tags = {f"test_{name}": str(report[name]) for name in HEADLINE_METRICS}
    tags.update(
        test_images=str(report["test_images"]),
        test_data_sha256=test_data_sha256,
        augmented_manifest_sha256=manifest_sha256,
        git_commit=git_commit,
        run_id=run_id,
    )
    return tags


def version_description(report: dict, run_id: str, image_size: int) -> str:
    def figure(name: str) -> str:
        value = report[name]
        return "undefined" if value is None else f"{value:.3f}"

    return (
        f"Keras CNN, {image_size} px RGB in, 9 ISIC diagnosis probabilities out. "
        f"On the test split ({report['test_images']} images): accuracy {figure('accuracy')}, "
        f"balanced accuracy {figure('balanced_accuracy')}, macro F1 {figure('macro_f1')}, "
        f"melanoma AUC {figure('melanoma_auc')}, melanoma sensitivity "
        f"{figure('melanoma_sensitivity')} / specificity {figure('melanoma_specificity')} "
        f"at P(melanoma) >= {report['melanoma_threshold']}. MLflow run {run_id}."
    )


def register_and_decide(
    model_uri: str,
    params: RegistryParams,
    new_score: float | None,
    description: str,
    tags: dict[str, str],
    score_champion: Callable[[str], float | None],
) -> tuple[str, Decision]:
    """Register the model as a new version, re-score the current champion with
    `score_champion(champion_model_uri)` on the same test data, and promote the new version if
    `decide_promotion` says so. The decision and its reason are tags of the new version."""
    client = MlflowClient()
    champion = champion_version(client, params.model_name)
    version = register_version(model_uri, params.model_name, description, tags)
    champion_score = (
        score_champion(f"models:/{params.model_name}/{champion}") if champion is not None else None
    )
    decision = decide_promotion(
        params.primary_metric,
        math.nan if new_score is None else new_score,
        champion,
        champion_score,
        params.min_improvement,
    )
    record_decision(client, params.model_name, version, decision)
    return version, decision


def decide_promotion(
    metric: str,
    new_score: float,
    champion_version: str | None,
    champion_score: float | None,
    min_improvement: float,
) -> Decision:
    """The new version becomes champion if there is none yet, or if it beats the champion's
    score, measured on the same test data, by more than zero and at least min_improvement."""
    if champion_version is None:
        return Decision(True, "no champion yet: the first evaluated version becomes champion")
    if math.isnan(new_score):
        return Decision(False, f"{metric} of the new version is undefined on this test split")
    if champion_score is None or math.isnan(champion_score):
        return Decision(
            True,
            f"champion v{champion_version} has no {metric} on this test split "
            "(it could not be scored, or the figure is undefined)",
        )
    gain = new_score - champion_score
    figures = (
        f"{metric} {new_score:.4f} vs champion v{champion_version} {champion_score:.4f} "
        f"(gain {gain:+.4f}, required > 0 and >= {min_improvement})"
    )
    if gain > 0 and gain >= min_improvement - TOLERANCE:
        return Decision(True, f"better: {figures}")
    return Decision(False, f"not better enough: {figures}")


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version holding the champion alias; None if there is none or no such model."""
    # search_model_versions() returns empty aliases on SQLite: the registered model has them.
    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return None if version is None else str(version)


def champion_history(client: MlflowClient, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def register_version(model_uri: str, name: str, description: str, tags: dict[str, str]) -> str:
    """A new version of `name` (created if needed) for the model at model_uri; its number."""
    # The SQLite store gives version numbers as ints, elsewhere they are strings.
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    MlflowClient().update_model_version(name, version, description=description)
    log.info("registered %s version %s from %s", name, version, model_uri)
    return version


def record_decision(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Tag the version with the decision; move the alias if it is a promotion."""
    client.set_model_version_tag(
        name, version, DECISION_TAG, PROMOTED if decision.promote else KEPT
    )
    client.set_model_version_tag(name, version, REASON_TAG, decision.reason)
    if decision.promote:
        _set_champion(client, name, version)
    log.info(
        "%s v%s %s: %s", name, version, PROMOTED if decision.promote else KEPT, decision.reason
    )


def promote_by_hand(client: MlflowClient, name: str, version: str) -> str | None:
    """Make `version` champion whatever its scores; return the version that was champion."""
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        raise RegistryError(f"{name} has no version {version}: {error.message}") from None
    previous = champion_version(client, name)
    if previous == version:
        raise RegistryError(f"{name} v{version} is already the champion")
    _set_champion(client, name, version)
    was = f"v{previous}" if previous else "none"
    client.set_model_version_tag(
        name, version, MANUAL_TAG, f"promoted by hand at {_now()} (champion was {was})"
    )
    return previous


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Give the alias back to the champion before the current one; return (from, to)."""
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back from")
    history = champion_history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"{name} v{current} is the first champion: there is none before it")
    previous = history[-1]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(
        name, previous, MANUAL_TAG, f"restored by rollback from v{current} at {_now()}"
    )
    return current, previous


def _set_champion(client: MlflowClient, name: str, version: str) -> None:
    history = champion_history(client, name)
    current = champion_version(client, name)
    # The alias may have been moved outside this module (e.g. in the UI): keep it in the history.
    if current is not None and (not history or history[-1] != current):
        history.append(current)
    history.append(version)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
