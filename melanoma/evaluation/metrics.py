"""Test-split metrics of a model (scikit-learn's definitions, computed with numpy), bootstrap
confidence intervals, plots.

Every metric is a function of (label indices, class probabilities, melanoma threshold), so the
bootstrap recomputes exactly the same definitions on resampled test sets. A metric that is
undefined on a sample (a class absent, only one class for the ROC curve) is NaN there, and the
interval is taken over the samples where it is defined.
"""

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
from tqdm import tqdm

from melanoma.labels import LABELS, MELANOMA, MELANOMA_INDEX
from melanoma.reports import THRESHOLD_FREE_METRICS

log = logging.getLogger(__name__)

CLASS_INDICES = list(range(len(LABELS)))


def probability_column(label: str) -> str:
    return f"p_{label}"


def melanoma_alerts(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """True where P(melanoma) is at or above the threshold."""
    return probabilities[:, MELANOMA_INDEX] >= threshold


def melanoma_auc(is_melanoma: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of the melanoma score (NaN without both classes), as the Mann-Whitney U statistic
    over the pairs, ties counted half: sklearn's roc_auc_score, but 20 times faster, which the
    paired bootstrap of `register` (two AUCs per draw, 1000 draws) needs."""
    melanomas = int(is_melanoma.sum())
    others = len(is_melanoma) - melanomas
    if not melanomas or not others:
        return math.nan
    rank_sum = rankdata(scores)[is_melanoma].sum()
    return float((rank_sum - melanomas * (melanomas + 1) / 2) / (melanomas * others))


@dataclass(frozen=True)
class ClassCounts:
    """Per class of LABELS: images of it (`true`), images predicted as it, and the right ones."""

    true: np.ndarray
    predicted: np.ndarray
    right: np.ndarray

    @classmethod
    def of(cls, label_indices: np.ndarray, predicted: np.ndarray) -> "ClassCounts":
        """The counts from the confusion matrix, made with numpy: scikit-learn's metric
        functions check their inputs at each call, and all the metrics of a set took 8 ms with
        them against 0.2 ms so, seconds per evaluation set over the bootstrap's draws."""
        n = len(LABELS)
        confusion = np.bincount(label_indices * n + predicted, minlength=n * n).reshape(n, n)
        return cls(confusion.sum(axis=1), confusion.sum(axis=0), np.diagonal(confusion))

    def precision(self) -> np.ndarray:
        return _ratio(self.right, self.predicted)

    def recall(self) -> np.ndarray:
        return _ratio(self.right, self.true)

    def f1(self) -> np.ndarray:
        """2 precision recall / (precision + recall), as scikit-learn computes it: NaN only for
        a class neither present nor predicted."""
        return _ratio(2 * self.right, self.true + self.predicted)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (scikit-learn's
    zero_division=np.nan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def threshold_free_metric(name: str, label_indices: np.ndarray, probabilities: np.ndarray) -> float:
    """One of THRESHOLD_FREE_METRICS (NaN where undefined). Multi-class metrics average over the
    classes present in `label_indices`: an external set with four classes is judged on those
    four. The values are scikit-learn's accuracy_score, balanced_accuracy_score and macro
    f1_score over the present labels."""
    if name == "melanoma_auc":
        return melanoma_auc(label_indices == MELANOMA_INDEX, probabilities[:, MELANOMA_INDEX])
    if name not in THRESHOLD_FREE_METRICS:
        raise ValueError(
            f"unknown metric {name!r}; threshold-free metrics: {THRESHOLD_FREE_METRICS}"
        )
    counts = ClassCounts.of(label_indices, probabilities.argmax(axis=1))
    present = counts.true > 0
    if name == "accuracy":
        return float(counts.right.sum() / len(label_indices))
    if name == "balanced_accuracy":
        return float(np.mean(counts.recall()[present]))
    return float(np.mean(counts.f1()[present]))  # macro_f1


def evaluation_metrics(
    label_indices: np.ndarray, probabilities: np.ndarray, threshold: float
) -> dict[str, float]:
    """Every metric of one evaluation set, flat: headline metrics, then
    `<label>_{precision,recall,f1}`.

    `label_indices` index melanoma.labels.LABELS, `probabilities` has one row per image.
    The predicted class is the most probable one; the melanoma alert uses the threshold instead.
    """
    predicted = probabilities.argmax(axis=1)
    is_melanoma = label_indices == MELANOMA_INDEX
    alert = melanoma_alerts(probabilities, threshold)
    # floats and 0-d arrays (_ratio), Python floats once returned
    metrics: dict[str, float | np.ndarray] = {
        name: threshold_free_metric(name, label_indices, probabilities)
        for name in THRESHOLD_FREE_METRICS
    }
    metrics["melanoma_sensitivity"] = _ratio(np.sum(alert & is_melanoma), np.sum(is_melanoma))
    metrics["melanoma_specificity"] = _ratio(np.sum(~alert & ~is_melanoma), np.sum(~is_melanoma))
    counts = ClassCounts.of(label_indices, predicted)
    precision, recall, f1 = counts.precision(), counts.recall(), counts.f1()
    for index, label in enumerate(LABELS):
        metrics[f"{label}_precision"] = precision[index]
        metrics[f"{label}_recall"] = recall[index]
        metrics[f"{label}_f1"] = f1[index]
    return {name: float(value) for name, value in metrics.items()}


def validation_metrics(
    label_indices: np.ndarray, probabilities: np.ndarray
) -> dict[str, float | None]:
    """The headline metrics that do not depend on the melanoma threshold (an undefined one as
    None): `train` reports them on the validation split. The threshold may be chosen from the
    validation probabilities, so the model must not depend on it."""
    return {
        name: _json_number(threshold_free_metric(name, label_indices, probabilities))
        for name in THRESHOLD_FREE_METRICS
    }


def per_source_metrics(
    label_indices: np.ndarray, probabilities: np.ndarray, sources: np.ndarray
) -> dict[str, dict[str, float | int | None]]:
    """Per data source (a clinic): images, melanomas, melanoma AUC and balanced accuracy of its
    rows, so that a source swamped by a larger one in the whole figures stays visible."""
    figures = {}
    for source in sorted(set(sources)):
        rows = sources == source
        true, predicted = label_indices[rows], probabilities[rows]
        figures[str(source)] = {
            "images": int(rows.sum()),
            "melanomas": int((true == MELANOMA_INDEX).sum()),
            "melanoma_auc": _json_number(threshold_free_metric("melanoma_auc", true, predicted)),
            "balanced_accuracy": _json_number(
                threshold_free_metric("balanced_accuracy", true, predicted)
            ),
        }
    return figures


def bootstrap_intervals(
    label_indices: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    samples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric of `evaluation_metrics`: resample images with
    replacement `samples` times. A metric never defined on any sample gets (NaN, NaN)."""
    rng = np.random.default_rng(seed)
    draws: list[dict[str, float]] = []
    for _ in tqdm(range(samples), desc="bootstrap", unit="sample", leave=False):
        rows = rng.integers(0, len(label_indices), size=len(label_indices))
        draws.append(evaluation_metrics(label_indices[rows], probabilities[rows], threshold))
    table = pd.DataFrame(draws)
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for name in table.columns:
        values = table[name].dropna().to_numpy()
        if len(values) == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.percentile(values, [tail, 100 - tail])
            intervals[name] = (float(low), float(high))
    return intervals


def metrics_report(
    label_indices: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    bootstrap_samples: int,
    seed: int,
    set_name: str = "test",
) -> dict[str, float | int | None]:
    """One evaluation set's section of reports/metrics.json: its image count, then each metric
    followed by `<metric>_ci_low` and `<metric>_ci_high` (95% bootstrap, left out when
    bootstrap_samples is 0).

    Undefined metrics are None (JSON null): NaN is not valid JSON. Metrics are not rounded, so
    that a model compared with itself scores exactly the same.
    """
    absent = [
        label for index, label in enumerate(LABELS) if index not in set(label_indices.tolist())
    ]
    if absent:
        log.info(
            "%s: no images of %s: their recall is undefined and multi-class metrics average "
            "the other %d classes",
            set_name,
            ", ".join(absent),
            len(LABELS) - len(absent),
        )
    metrics = evaluation_metrics(label_indices, probabilities, threshold)
    intervals = (
        bootstrap_intervals(label_indices, probabilities, threshold, bootstrap_samples, seed)
        if bootstrap_samples
        else {}
    )
    report: dict[str, float | int | None] = {"images": len(label_indices)}
    for name, value in metrics.items():
        report[name] = _json_number(value)
        if name in intervals:
            low, high = intervals[name]
            report[f"{name}_ci_low"] = _json_number(low)
            report[f"{name}_ci_high"] = _json_number(high)
    return report


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def predictions_table(
    image_paths: Sequence[str],
    label_indices: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | None = None,
) -> pd.DataFrame:
    """One row per image, label names rather than indices (reports/predictions.csv of the test
    split; reports/validation_predictions.csv, without a threshold, has no alert column)."""
    table = pd.DataFrame(
        {
            "image_path": list(image_paths),
            "label": [LABELS[i] for i in label_indices],
            "predicted": [LABELS[i] for i in probabilities.argmax(axis=1)],
        }
    )
    for index, label in enumerate(LABELS):
        table[probability_column(label)] = probabilities[:, index].round(6)
    if threshold is not None:
        table["melanoma_alert"] = melanoma_alerts(probabilities, threshold)
    return table


def images_sha256(image_paths: Sequence[str], label_indices: np.ndarray) -> str:
    """One hash of the test images' bytes and labels: two models were scored on the same test
    data if and only if their hashes are equal."""
    digest = hashlib.sha256()
    for path, label_index in sorted(zip(image_paths, label_indices.tolist(), strict=True)):
        digest.update(f"{path}\t{LABELS[label_index]}\t".encode())
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(label indices, probabilities) of a table written by `predictions_table`."""
    table = pd.read_csv(path)
    label_indices = table["label"].map(LABELS.index).to_numpy(dtype=np.int32)
    columns = [probability_column(label) for label in LABELS]
    return label_indices, table[columns].to_numpy(dtype=np.float64)


def plot_confusion_matrix(
    label_indices: np.ndarray, probabilities: np.ndarray, path: Path, set_name: str = "test split"
) -> None:
    # Figure without pyplot: no GUI backend, no global figure state to leak.
    figure = Figure(figsize=(9, 8))
    axes = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        label_indices,
        probabilities.argmax(axis=1),
        labels=CLASS_INDICES,
        display_labels=LABELS,
        xticks_rotation=45,
        colorbar=False,
        ax=axes,
    )
    axes.set_title(f"Confusion matrix, {set_name} ({len(label_indices)} images)")
    save_figure(figure, path)


def plot_melanoma_roc(
    label_indices: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    path: Path,
    set_name: str = "test split",
) -> None:
    """Melanoma-vs-rest ROC curve, with the operating point of the alert threshold marked."""
    is_melanoma = label_indices == MELANOMA_INDEX
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    if 0 < is_melanoma.sum() < len(label_indices):
        RocCurveDisplay.from_predictions(
            is_melanoma, probabilities[:, MELANOMA_INDEX], name=f"{MELANOMA} vs rest", ax=axes
        )
        alert = melanoma_alerts(probabilities, threshold)
        sensitivity = alert[is_melanoma].mean()
        false_positive_rate = alert[~is_melanoma].mean()
        axes.plot(false_positive_rate, sensitivity, "o", label=f"alert threshold {threshold}")
        axes.legend(loc="lower right")
    else:
        axes.text(
            0.5, 0.5, f"undefined: the {set_name} needs melanoma and other images", ha="center"
        )
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_title(f"Melanoma-vs-rest ROC curve ({set_name}, {len(label_indices)} images)")
    save_figure(figure, path)


def save_figure(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
