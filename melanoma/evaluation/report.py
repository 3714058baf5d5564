"""The evaluate stage's logic: the evaluation sets, the alert threshold, and each set's report.

Evaluation sets are the test split and every external set of `evaluate.external_sets`. The
alert threshold is chosen on the validation split or on an external set (melanoma.
operating_point); a set that chooses it reports on its other half only.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from melanoma.data.dataset import split_rows
from melanoma.data.manifest import AUGMENTED_COLUMNS, file_sha256, read_manifest
from melanoma.evaluation.external import ExternalImages, ExternalSetError
from melanoma.evaluation.metrics import (
    images_sha256,
    metrics_report,
    plot_confusion_matrix,
    plot_melanoma_roc,
    save_figure,
)
from melanoma.evaluation.operating_point import (
    Threshold,
    choose_threshold,
    sensitivity_upper_bound,
    split_halves,
)
from melanoma.inference.predict import predict_split
from melanoma.inference.views import views_of
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.metrics import melanoma_alerts, predictions_table, read_predictions
from melanoma.model.calibration import calibration_metrics, plot_reliability, uncalibrated
from melanoma.params.evaluation import EvaluateParams, OperatingPoint
from melanoma.reports import (
    AlertThreshold,
    MetricsReport,
    ReportingHalf,
    SetSection,
    ThresholdRule,
)

log = logging.getLogger(__name__)

VALIDATION, TEST = "validation", "test"
POOLED, SHIFT_MARGIN = "pooled", "shift_margin"
CHOOSE, REPORT = "choose", "report"
# Metrics of each set that go to MLflow as run metrics: with train's curves and summary, about 25
# per run, few enough to compare runs on at a glance in the MLflow UI. All of them, intervals and
# per-class metrics too, are in reports/metrics.json and in the run's table artifact
# evaluation/figures.json.
TRACKED_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "melanoma_auc",
    "melanoma_sensitivity",
    "melanoma_specificity",
)


def validation_scores(
    model: keras.Model, train_predictions: Path, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(label indices, probabilities) of the validation split as `model` scores it: train's
    predictions file (reports/validation_predictions.csv) itself for a model without test-time
    views, else the file's images, in its order, scored again by `model` (averaged views)."""
    if views_of(model) == 1:
        return read_predictions(train_predictions)
    table = pd.read_csv(train_predictions)
    label_indices = table["label"].map(LABELS.index).to_numpy(dtype=np.int32)
    log.info("the %d validation images scored with %d views", len(table), views_of(model))
    probabilities = predict_split(model, table["image_path"].tolist(), label_indices, batch_size)
    return label_indices, probabilities


@dataclass(frozen=True)
class EvaluationSet:
    """Images with labels: `paths` as the model reads them, `names` as the reports list them."""

    name: str
    paths: list[str]
    names: list[str]
    label_indices: np.ndarray

    def rows(self, rows: np.ndarray) -> "EvaluationSet":
        return replace(
            self,
            paths=[self.paths[i] for i in rows],
            names=[self.names[i] for i in rows],
            label_indices=self.label_indices[rows],
        )


def test_split_images(manifest: pd.DataFrame, manifest_path: Path) -> EvaluationSet:
    paths, label_indices = split_rows(manifest, "test", manifest_path)
    return EvaluationSet(TEST, paths, paths, label_indices)


def external_set(images: ExternalImages) -> EvaluationSet:
    return EvaluationSet(images.name, images.paths, images.source_paths, images.label_indices)


def evaluation_sets(
    external: list[ExternalImages], augmented_manifest: Path
) -> list[EvaluationSet]:
    """The test split of `augmented_manifest` (augment's manifest), then each external set."""
    manifest = read_manifest(augmented_manifest, AUGMENTED_COLUMNS)
    return [test_split_images(manifest, augmented_manifest), *(external_set(e) for e in external)]


@dataclass(frozen=True)
class Lineage:
    """What the evaluated metrics came from: the model card's lineage and the version's tags."""

    git_commit: str
    test_images_sha256: str
    augmented_manifest_sha256: str


def evaluation_lineage(git_commit: str, test: EvaluationSet, augmented_manifest: Path) -> Lineage:
    return Lineage(
        git_commit=git_commit,
        test_images_sha256=images_sha256(test.paths, test.label_indices),
        augmented_manifest_sha256=file_sha256(augmented_manifest),
    )


@dataclass(frozen=True)
class OperatingPointChoice:
    threshold: Threshold
    chosen_on: str  # in words, with the number of images
    # Per set name, the role of each image: CHOOSE (chose the threshold, not reported) or REPORT.
    roles: dict[str, np.ndarray]

    def describe(self, params: OperatingPoint) -> AlertThreshold:
        t = self.threshold
        return AlertThreshold(
            threshold=t.value,
            rule=params.choose_on,
            chosen_on=self.chosen_on,
            target_sensitivity=params.target_sensitivity,
            confidence=params.confidence,
            melanomas=t.melanomas,
            caught=t.caught,
            sensitivity_lower_bound=t.sensitivity_lower_bound,
            target_reachable=t.target_reachable,
        )


def choosing_halves(
    sets: list[EvaluationSet], seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(choosing rows, reporting rows) of every external set with melanomas to split."""
    return {
        s.name: split_halves(s.label_indices, seed)
        for s in sets
        if s.name != TEST and (s.label_indices == MELANOMA_INDEX).sum() >= 2
    }


def choosing_rows(
    sets: list[EvaluationSet],
    halves: dict[str, tuple[np.ndarray, np.ndarray]],
    probabilities: dict[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split set's choosing half as (label indices, probabilities): what rules choose on."""
    by_name = {s.name: s for s in sets}
    return {
        name: (by_name[name].label_indices[choose], probabilities[name][choose])
        for name, (choose, _) in halves.items()
    }


def rule_threshold(
    rule: str,
    params: OperatingPoint,
    validation: tuple[np.ndarray, np.ndarray],
    choosers: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[Threshold, str]:
    """The threshold of one rule, and what chose it in words. `choosers` holds each external
    set's choosing half as (label indices, probabilities).

    Rules: `validation`; an external set's name (its choosing half); `pooled` (validation and
    every choosing half as one set); `shift_margin` (validation, with the target raised by the
    sensitivity that validation's own threshold loses on the choosing halves: the move to
    another archive, which the confidence margin does not cover).
    """
    target, confidence = params.target_sensitivity, params.confidence
    if rule == VALIDATION:
        return choose_threshold(*validation, target, confidence), _images(
            "the validation split", validation
        )
    if rule in choosers:
        return choose_threshold(*choosers[rule], target, confidence), _images(
            f"the choosing half of {rule}", choosers[rule]
        )
    if not choosers:
        raise ExternalSetError(
            f"evaluate.operating_point.choose_on={rule!r} needs an external set with at least "
            "two melanomas (one for each half); none of evaluate.external_sets has them"
        )
    external = (
        np.concatenate([label_indices for label_indices, _ in choosers.values()]),
        np.concatenate([probabilities for _, probabilities in choosers.values()]),
    )
    halves = " and ".join(f"the choosing half of {name}" for name in choosers)
    if rule == POOLED:
        pooled = (
            np.concatenate([validation[0], external[0]]),
            np.concatenate([validation[1], external[1]]),
        )
        return choose_threshold(*pooled, target, confidence), _images(
            f"the validation split and {halves}", pooled
        )
    if rule == SHIFT_MARGIN:
        own = choose_threshold(*validation, target, confidence)
        margin = max(
            0.0, sensitivity_at(*validation, own.value) - sensitivity_at(*external, own.value)
        )
        threshold = choose_threshold(*validation, target + margin, confidence)
        return threshold, _images(
            f"the validation split, target raised by {margin:.3f} (the sensitivity its "
            f"threshold lost on {halves})",
            validation,
        )
    raise ValueError(f"unknown threshold rule {rule!r}")


def sensitivity_at(label_indices: np.ndarray, probabilities: np.ndarray, threshold: float) -> float:
    is_melanoma = label_indices == MELANOMA_INDEX
    return float(melanoma_alerts(probabilities[is_melanoma], threshold).mean())


def _images(what: str, rows: tuple[np.ndarray, np.ndarray]) -> str:
    return f"{what} ({len(rows[0])} images)"


def choose_operating_point(
    params: OperatingPoint,
    seed: int,
    validation: tuple[np.ndarray, np.ndarray],
    sets: list[EvaluationSet],
    probabilities: dict[str, np.ndarray],
) -> OperatingPointChoice:
    """The threshold of the rule `params.choose_on` (rule_threshold). An external set's
    choosing half (`split_halves(label_indices, seed)`) is marked CHOOSE when the rule used it."""
    roles = {s.name: np.full(len(s.label_indices), REPORT) for s in sets}
    halves = choosing_halves(sets, seed)
    if params.choose_on != VALIDATION and params.choose_on not in (POOLED, SHIFT_MARGIN):
        # The set the rule names chooses on its half even without two melanomas to report.
        chooser = next(s for s in sets if s.name == params.choose_on)
        halves = {chooser.name: split_halves(chooser.label_indices, seed)}
    choosers = choosing_rows(sets, halves, probabilities)
    threshold, chosen_on = rule_threshold(params.choose_on, params, validation, choosers)
    if params.choose_on != VALIDATION:
        for name, (choose, _) in halves.items():
            roles[name][choose] = CHOOSE
    log.info(
        "melanoma alert threshold %.4f, chosen on %s: %d of %d melanomas caught, sensitivity "
        "lower bound %.3f (target %.2f at %.0f%% confidence)",
        threshold.value,
        chosen_on,
        threshold.caught,
        threshold.melanomas,
        threshold.sensitivity_lower_bound,
        params.target_sensitivity,
        params.confidence * 100,
    )
    if not threshold.target_reachable:
        log.warning(
            "%d melanomas are too few to show the target sensitivity at %.0f%% confidence: the "
            "threshold catches all of them",
            threshold.melanomas,
            params.confidence * 100,
        )
    return OperatingPointChoice(threshold, chosen_on, roles)


def threshold_rules(
    params: OperatingPoint,
    seed: int,
    validation: tuple[np.ndarray, np.ndarray],
    sets: list[EvaluationSet],
    probabilities: dict[str, np.ndarray],
) -> dict[str, ThresholdRule]:
    """What each way of choosing the threshold delivers on images it never saw: the
    reporting half of every external set with melanomas (`split_halves(label_indices, seed)`).

    Rules (rule_threshold): `validation`, `<set>` for the choosing half of each external set,
    `pooled` and `shift_margin`. Per rule, its threshold and, per external set, the alert's
    sensitivity and specificity on that set's reporting half; the default `choose_on` is the
    rule whose promise holds there with the best specificity.
    """
    by_name = {s.name: s for s in sets}
    halves = choosing_halves(sets, seed)
    choosers = choosing_rows(sets, halves, probabilities)
    rules = {}
    for rule in [VALIDATION, *choosers, *((POOLED, SHIFT_MARGIN) if choosers else ())]:
        threshold, _ = rule_threshold(rule, params, validation, choosers)
        delivered = {}
        for name, (_, report_rows) in halves.items():
            report_labels = by_name[name].label_indices[report_rows]
            alerts = melanoma_alerts(probabilities[name][report_rows], threshold.value)
            is_melanoma = report_labels == MELANOMA_INDEX
            delivered[name] = ReportingHalf(
                melanomas=int(is_melanoma.sum()),
                sensitivity=float(alerts[is_melanoma].mean()),
                specificity=float(1 - alerts[~is_melanoma].mean()),
            )
        rules[rule] = ThresholdRule(threshold=threshold.value, reporting_halves=delivered)
    return rules


def set_section(
    evaluation_set: EvaluationSet,
    probabilities: np.ndarray,
    threshold: float,
    temperature: float,
    params: OperatingPoint,
    bootstrap_samples: int,
    seed: int,
) -> SetSection:
    """A set's section of reports/metrics.json: metrics_report, calibration (and, when the
    model was calibrated, the uncalibrated metrics too), and whether the alert can still meet
    the target sensitivity there."""
    label_indices = evaluation_set.label_indices
    section: dict[str, object] = {
        **metrics_report(
            label_indices, probabilities, threshold, bootstrap_samples, seed, evaluation_set.name
        )
    }
    section |= calibration_metrics(label_indices, probabilities)
    before = uncalibrated(probabilities, temperature)
    if before is not None:
        section |= {
            f"{name}_uncalibrated": value
            for name, value in calibration_metrics(label_indices, before).items()
        }
    is_melanoma = label_indices == MELANOMA_INDEX
    melanomas = int(is_melanoma.sum())
    section["melanomas"] = melanomas
    if melanomas == 0:
        section["note"] = "no melanoma in this set: melanoma-vs-rest figures are undefined"
        return SetSection.model_validate(section)
    caught = int(melanoma_alerts(probabilities, threshold)[is_melanoma].sum())
    upper = sensitivity_upper_bound(caught, melanomas, params.confidence)
    section["melanoma_sensitivity_upper_bound"] = upper
    section["alert_below_target"] = upper < params.target_sensitivity
    return SetSection.model_validate(section)


def below_target_warning(name: str, section: SetSection, params: OperatingPoint) -> str | None:
    if not section.alert_below_target:
        return None
    return (
        f"{name}: the melanoma alert misses its target here: sensitivity "
        f"{section.melanoma_sensitivity:.3f}, upper {params.confidence:.0%} bound "
        f"{section.melanoma_sensitivity_upper_bound:.3f} < target {params.target_sensitivity}"
    )


def write_set_outputs(
    evaluation_set: EvaluationSet,
    probabilities: np.ndarray,
    roles: np.ndarray,
    threshold: float,
    temperature: float,
    predictions_file: Path,
    plots_dir: Path,
) -> None:
    """The set's predictions CSV (every image, with its role) and its plots (of the reporting
    images)."""
    table = predictions_table(
        evaluation_set.names, evaluation_set.label_indices, probabilities, threshold
    )
    table["role"] = roles
    predictions_file.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(predictions_file, index=False)
    reporting = roles == REPORT
    name, label_indices, probabilities = (
        evaluation_set.name,
        evaluation_set.label_indices[reporting],
        probabilities[reporting],
    )
    confusion = plots_dir / f"{name}_confusion_matrix.png"
    roc = plots_dir / f"{name}_roc_curve.png"
    reliability = plots_dir / f"{name}_reliability.png"
    plot_confusion_matrix(label_indices, probabilities, confusion, name)
    plot_melanoma_roc(label_indices, probabilities, threshold, roc, name)
    before = uncalibrated(probabilities, temperature)
    save_figure(
        plot_reliability(label_indices, probabilities, before, f"Reliability, {name}"), reliability
    )


def evaluation_report(
    sets: list[EvaluationSet],
    probabilities: dict[str, np.ndarray],
    choice: OperatingPointChoice,
    temperature: float,
    params: EvaluateParams,
    rules: dict[str, ThresholdRule],
    predictions_file: Callable[[str], Path],
    plots_dir: Path,
) -> MetricsReport:
    """reports/metrics.json's content (operating point, a section per set: `test` and
    `external.<name>`, warnings, and the threshold rules as `threshold_rules` gave them); writes
    the per-set files (predictions CSV at `predictions_file(set name)`, plots in plots_dir)."""
    sections: dict[str, SetSection] = {}
    warnings = []
    threshold = choice.threshold.value
    for evaluation_set in sets:
        name, roles = evaluation_set.name, choice.roles[evaluation_set.name]
        reporting = np.flatnonzero(roles == REPORT)
        section = set_section(
            evaluation_set.rows(reporting),
            probabilities[name][reporting],
            threshold,
            temperature,
            params.operating_point,
            params.bootstrap_samples,
            params.seed,
        )
        sections[name] = section
        warning = below_target_warning(name, section, params.operating_point)
        if warning:
            log.warning("%s", warning)
            warnings.append(warning)
        log.info("%s: %s", name, headline(section))
        write_set_outputs(
            evaluation_set,
            probabilities[name],
            roles,
            threshold,
            temperature,
            predictions_file(name),
            plots_dir,
        )
    return MetricsReport(
        operating_point=choice.describe(params.operating_point),
        temperature=temperature,
        bootstrap_samples=params.bootstrap_samples,
        test=sections.pop(TEST),
        external=sections,
        warnings=warnings,
        threshold_rules=rules,
    )


def headline(section: SetSection) -> str:
    parts = [f"{section.images} images"]
    for name in (*TRACKED_METRICS, "ece"):
        value = getattr(section, name)
        parts.append(f"{name} {'undefined' if value is None else f'{value:.3f}'}")
    return ", ".join(parts)


def tracked_metrics(report: MetricsReport) -> dict[str, float]:
    """The few metrics a person compares runs on, `<set>_<metric>`; the rest is in the report
    (logged as evaluation/metrics.json)."""
    metrics = {"melanoma_threshold": report.operating_point.threshold}
    for set_name, section in report.sections():
        for name in TRACKED_METRICS:
            if getattr(section, name) is not None:
                metrics[f"{set_name}_{name}"] = getattr(section, name)
    return metrics
