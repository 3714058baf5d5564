"""An evaluation set's metrics (melanoma.metrics) with bootstrap confidence intervals, the test
images' hash, and the plots.

Every metric is a function of (label indices, class probabilities, melanoma threshold), so the
bootstrap recomputes exactly the same definitions on resampled test sets. A metric that is
undefined on a sample (a class absent, only one class for the ROC curve) is NaN there, and the
interval is taken over the samples where it is defined.
"""

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
from tqdm import tqdm

from melanoma.labels import LABELS, MELANOMA, MELANOMA_INDEX
from melanoma.metrics import evaluation_metrics, json_number, melanoma_alerts

log = logging.getLogger(__name__)

CLASS_INDICES = list(range(len(LABELS)))


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
        report[name] = json_number(value)
        if name in intervals:
            low, high = intervals[name]
            report[f"{name}_ci_low"] = json_number(low)
            report[f"{name}_ci_high"] = json_number(high)
    return report


def images_sha256(image_paths: Sequence[str], label_indices: np.ndarray) -> str:
    """One hash of the test images' bytes and labels: two models were scored on the same test
    data if and only if their hashes are equal."""
    digest = hashlib.sha256()
    for path, label_index in sorted(zip(image_paths, label_indices.tolist(), strict=True)):
        digest.update(f"{path}\t{LABELS[label_index]}\t".encode())
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


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
