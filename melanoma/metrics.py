"""The metrics of a set of predictions (scikit-learn's definitions, computed with numpy), and
the predictions table they are read from: one definition for what `train` reports on the
validation split, what `evaluate` reports on each set (melanoma.evaluation.metrics adds the
bootstrap intervals and the plots) and what `register` compares.

A metric that is undefined on a sample (a class absent, only one class for the ROC curve) is
NaN there; `json_number` writes it as null.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.reports import THRESHOLD_FREE_METRICS


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
        name: json_number(threshold_free_metric(name, label_indices, probabilities))
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
            "melanoma_auc": json_number(threshold_free_metric("melanoma_auc", true, predicted)),
            "balanced_accuracy": json_number(
                threshold_free_metric("balanced_accuracy", true, predicted)
            ),
        }
    return figures


def json_number(value: float) -> float | None:
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


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(label indices, probabilities) of a table written by `predictions_table`."""
    table = pd.read_csv(path)
    label_indices = table["label"].map(LABELS.index).to_numpy(dtype=np.int32)
    columns = [probability_column(label) for label in LABELS]
    return label_indices, table[columns].to_numpy(dtype=np.float64)
