"""The MLflow model registry: one version per trained model, the `champion` alias for the best.

Promotion uses aliases only (registry stages are deprecated). The challenger and the champion
are scored on the same images (the test split and every external set), and the alias moves only
when the lower bound of a paired bootstrap interval of the difference exceeds
`registry.min_improvement`: two trainings that differ by noise never swap the champion. Which
versions held the alias, in order, is kept in the registered model's tag `champion_history`
(a JSON list, oldest first), so `rollback` can return to the previous champion and be repeated.
Each version carries its alert threshold (tag `melanoma_threshold`), which `melanoma predict`
applies to it.

Registering is idempotent: a model (its run and logged model) that already has a version gets
that version back, with fresh tags and description, and its decision completed or refreshed. The
decision tag is written last, so a registration stopped half-way leaves a version without one,
which the next run of `register` finds and decides.
"""

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from melanoma.data.dataset import make_dataset
from melanoma.errors import MelanomaError
from melanoma.inference.predict import (
    ModelLoadError,
    load_model,
    model_input_size,
    predict_split,
)
from melanoma.metrics import threshold_free_metric
from melanoma.model.logged_model import log_keras_model
from melanoma.params.evaluation import PromotionParams, RegistryParams
from melanoma.reports import HEADLINE_METRICS, MetricsReport, RunInfo

log = logging.getLogger(__name__)

CHAMPION = "champion"
HISTORY_TAG = "champion_history"
DECISION_TAG = "promotion_decision"  # promoted | kept: what register decided for the version
REASON_TAG = "promotion_reason"
# The alert threshold chosen for the version: `melanoma predict` uses it, whatever params say now.
THRESHOLD_TAG = "melanoma_threshold"
MANUAL_TAG = "champion_set_by_hand"  # when and how a person moved the alias to this version
PROMOTED, KEPT = "promoted", "kept"
# A difference of exactly zero must not pass for a gain on the last bit of a float.
TOLERANCE = 1e-12
MODEL_URI = re.compile(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))")
SOURCE_RUN_TAG = "source_run_id"
# On a run that source_run made: the model it logged there, so a later call finds and reuses it.
LOGGED_MODEL_TAG = "logged_model_uri"
# On a version: the trained (Keras) model its served model wraps.
TRAINED_MODEL_TAG = "trained_model_uri"
# On a version: the test-time views its served model averages (predict.views; absent: 1).
VIEWS_TAG = "predict_views"


class RegistryError(MelanomaError):
    """A registry action cannot be done; the message says why."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def source_run(
    run_info: RunInfo, experiment_id: str, model_file: Path, example_image: str
) -> tuple[str, str]:
    """(run id, model URI) to evaluate into: the training run of run_info if this store has it.

    A fresh store, or a train stage that DVC restored from its run cache, has no such run: then
    a new run, tagged with the missing run id, gets the model file logged (as train logs it, with
    `example_image` as input example), and is used instead; once, whenever it is asked again.
    """
    try:
        mlflow.get_run(run_info.run_id)
        return run_info.run_id, run_info.model_uri
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    for earlier in mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.{SOURCE_RUN_TAG} = '{run_info.run_id}'",
        output_format="list",
    ):
        if LOGGED_MODEL_TAG in earlier.data.tags:
            return earlier.info.run_id, earlier.data.tags[LOGGED_MODEL_TAG]
    log.warning(
        "training run %s is not in the tracking store %s: logging %s into a new run",
        run_info.run_id,
        mlflow.get_tracking_uri(),
        model_file,
    )
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name="register (training run not in this store)",
        tags={SOURCE_RUN_TAG: run_info.run_id},
    ) as run:
        model = keras.saving.load_model(model_file)
        example = make_dataset([example_image], np.zeros(1, np.int32), model_input_size(model), 1)
        model_uri = log_keras_model(model, next(iter(example))[0].numpy()).model_uri
        mlflow.set_tag(LOGGED_MODEL_TAG, model_uri)
    return run.info.run_id, model_uri


@dataclass(frozen=True)
class ScoredImages:
    """The images both models are compared on, pooled over the evaluation sets: label indices,
    the challenger's probabilities, and the set of each image (the bootstrap resamples within
    each set, so every draw keeps the sets' sizes)."""

    label_indices: np.ndarray
    probabilities: np.ndarray
    sets: np.ndarray

    def images_per_set(self) -> dict[str, int]:
        names, counts = np.unique(self.sets, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


@dataclass(frozen=True)
class Comparison:
    """Challenger minus champion in one metric, with its paired bootstrap interval."""

    metric: str
    difference: float
    low: float
    high: float
    confidence: float
    samples: int
    images: dict[str, int]

    def describe(self, champion: str) -> str:
        sets = ", ".join(f"{name} {n}" for name, n in self.images.items())
        return (
            f"{self.metric} difference vs champion v{champion} {self.difference:+.4f}, "
            f"{self.confidence:.0%} paired bootstrap interval [{self.low:+.4f}, {self.high:+.4f}] "
            f"({self.samples} samples) on {sum(self.images.values())} images ({sets})"
        )


def paired_bootstrap(
    metric: str,
    images: ScoredImages,
    champion_probabilities: np.ndarray,
    params: PromotionParams,
) -> Comparison:
    """The difference in `metric` (challenger minus champion) on the same images, and its
    percentile interval over `params.bootstrap_samples` resamples that draw the same images for
    both models. Draws where the metric is undefined (no melanoma drawn, for the AUC) are
    skipped."""
    rng = np.random.default_rng(params.seed)
    groups = [np.flatnonzero(images.sets == name) for name in np.unique(images.sets)]

    def difference(rows: np.ndarray) -> float:
        label_indices = images.label_indices[rows]
        new = threshold_free_metric(metric, label_indices, images.probabilities[rows])
        return new - threshold_free_metric(metric, label_indices, champion_probabilities[rows])

    differences = []
    for _ in range(params.bootstrap_samples):
        rows = np.concatenate([rng.choice(group, size=len(group)) for group in groups])
        differences.append(difference(rows))
    draws = np.asarray(differences)
    draws = draws[~np.isnan(draws)]
    tail = (1 - params.confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail]) if len(draws) else (math.nan, math.nan)
    return Comparison(
        metric=metric,
        difference=difference(np.arange(len(images.label_indices))),
        low=float(low),
        high=float(high),
        confidence=params.confidence,
        samples=len(draws),
        images=images.images_per_set(),
    )


def champion_probabilities(
    model_uri: str, paths: Sequence[str], label_indices: np.ndarray, batch_size: int
) -> np.ndarray | None:
    """The champion's probabilities on the images; None if it cannot be loaded."""
    try:
        model = load_model(model_uri)
    except ModelLoadError as error:
        log.warning("%s", error)
        return None
    return predict_split(model, paths, label_indices, batch_size)


def version_tags(
    report: MetricsReport, run_id: str, test_data_sha256: str, manifest_sha256: str, git_commit: str
) -> dict[str, str]:
    """What a registry user needs to trust a version: its alert threshold, its figures on every
    evaluation set and what produced it."""
    tags = {THRESHOLD_TAG: str(report.operating_point.threshold)}
    for set_name, section in report.sections():
        tags |= {f"{set_name}_{name}": str(getattr(section, name)) for name in HEADLINE_METRICS}
        tags[f"{set_name}_images"] = str(section.images)
    tags.update(
        test_data_sha256=test_data_sha256,
        augmented_manifest_sha256=manifest_sha256,
        git_commit=git_commit,
        run_id=run_id,
    )
    return tags


def register_and_decide(
    model_uri: str,
    run_id: str,
    params: RegistryParams,
    description: str,
    tags: dict[str, str],
    images: ScoredImages,
    score_champion: Callable[[str], np.ndarray | None],
) -> tuple[str, Decision]:
    """The model's version (`version_for`); re-score the current champion on the same images
    with `score_champion(champion_model_uri)` (its probabilities, or None), and promote the
    version if `decide_promotion` says so. The decision and its reason are tags of the version.

    A version that already holds the alias stays champion: it is not compared with itself."""
    client = MlflowClient()
    version = version_for(client, model_uri, run_id, params.model_name, description, tags)
    champion = champion_version(client, params.model_name)
    if champion == version:
        reason = client.get_model_version(params.model_name, version).tags.get(REASON_TAG)
        decision = Decision(True, reason or "the champion already: kept as champion")
        record_decision(client, params.model_name, version, decision)
        return version, decision
    comparison = None
    if champion is not None:
        old = score_champion(f"models:/{params.model_name}/{champion}")
        if old is not None:
            comparison = paired_bootstrap(params.primary_metric, images, old, params.promotion)
    decision = decide_promotion(champion, comparison, params.min_improvement)
    record_decision(client, params.model_name, version, decision)
    return version, decision


def decide_promotion(
    champion_version: str | None, comparison: Comparison | None, min_improvement: float
) -> Decision:
    """The new version becomes champion if there is none yet, if the champion cannot be scored,
    or if the lower bound of the paired interval of the difference exceeds min_improvement:
    a gain that noise (which images happened to be drawn) does not explain."""
    if champion_version is None:
        return Decision(True, "no champion yet: the first evaluated version becomes champion")
    if comparison is None:
        return Decision(True, f"champion v{champion_version} could not be scored on these images")
    if math.isnan(comparison.low):
        return Decision(
            False, f"{comparison.metric} is undefined on these images: the champion stays"
        )
    evidence = (
        f"{comparison.describe(champion_version)}; the lower bound must exceed {min_improvement}"
    )
    if comparison.low > min_improvement + TOLERANCE:
        return Decision(True, f"better: {evidence}")
    return Decision(False, f"not shown to be better: {evidence}")


def registered_threshold(reference: str) -> float | None:
    """The alert threshold tagged on the registered version that a `models:/name@alias` or
    `models:/name/N` URI names; None for any other kind of reference."""
    if MODEL_URI.fullmatch(reference) is None:
        return None
    return tagged_threshold(registered_version(MlflowClient(), reference))


def registered_version(client: MlflowClient, reference: str) -> ModelVersion:
    """The registered version a `models:/name@alias` or `models:/name/N` reference names;
    RegistryError naming the reference when the registry has no such version."""
    match = MODEL_URI.fullmatch(reference)
    if match is None:
        raise RegistryError(f"{reference}: not models:/name@alias or models:/name/N")
    name, alias, number = match.groups()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, number)
    except MlflowException as error:
        raise RegistryError(f"{reference}: {error.message}") from None


def tagged_threshold(version: ModelVersion) -> float:
    """The alert threshold tagged on a registered version; RegistryError if it has none."""
    threshold = version.tags.get(THRESHOLD_TAG)
    if threshold is None:
        raise RegistryError(
            f"{version.name} v{version.version} has no {THRESHOLD_TAG} tag (registered before "
            "the threshold travelled with the version): give the threshold yourself"
        )
    return float(threshold)


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


def existing_version(client: MlflowClient, name: str, run_id: str, model_uri: str) -> str | None:
    """The version of `name` already registered from this run's model at model_uri, if any."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    versions = sorted(int(v.version) for v in found if v.source == model_uri)
    return str(versions[0]) if versions else None


def registered_source(
    client: MlflowClient, name: str, run_id: str, tags: dict[str, str]
) -> str | None:
    """The model source of a version of `name` registered from run_id with these tags' values
    of TRAINED_MODEL_TAG, THRESHOLD_TAG and VIEWS_TAG: the served model already logged for
    this trained model, threshold and views, which a re-run registers again instead of logging
    another. A version without VIEWS_TAG (registered before views existed) has one view."""
    one_view = {VIEWS_TAG: "1"}
    wanted = {
        key: {**one_view, **tags}[key] for key in (TRAINED_MODEL_TAG, THRESHOLD_TAG, VIEWS_TAG)
    }
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    matching = sorted(
        (int(v.version), v.source)
        for v in found
        if all({**one_view, **v.tags}.get(key) == value for key, value in wanted.items())
    )
    return matching[0][1] if matching else None


def version_for(
    client: MlflowClient,
    model_uri: str,
    run_id: str,
    name: str,
    description: str,
    tags: dict[str, str],
) -> str:
    """The version of this model: the one registered before, its description and tags made
    current, or a new one."""
    version = existing_version(client, name, run_id, model_uri)
    if version is None:
        return register_version(model_uri, name, description, tags)
    client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    log.info(
        "%s version %s already holds %s: its tags and description refreshed",
        name,
        version,
        model_uri,
    )
    return version


def record_decision(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Tag the version with the decision; move the alias if it is a promotion.

    The decision tag goes last: a version that has one has its alias settled too."""
    client.set_model_version_tag(name, version, REASON_TAG, decision.reason)
    if decision.promote and champion_version(client, name) != version:
        _set_champion(client, name, version)
    client.set_model_version_tag(
        name, version, DECISION_TAG, PROMOTED if decision.promote else KEPT
    )
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
    by_hand = f"promoted by hand at {_now()} (champion was {was})"
    client.set_model_version_tag(name, version, MANUAL_TAG, by_hand)
    # What `register` reports for a version that is the champion already: why it is.
    client.set_model_version_tag(name, version, REASON_TAG, by_hand)
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
