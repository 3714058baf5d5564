"""Calibrated probabilities: temperature scaling, and how well probabilities match frequencies.

Temperature scaling divides the logits by one number T fitted on the validation split
(Guo et al. 2017, "On calibration of modern neural networks"). It never changes which class is
the most probable, only how sure the model says it is. Every model ends in a softmax Dense
layer, so T is folded into that layer's kernel and bias: the saved model itself is calibrated,
and predict, serve and evaluate all see the same probabilities without any extra code.
"""

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar

from melanoma.model.architectures import OUTPUT_NAME

ECE_BINS = 15
# log(0) must not appear: a probability is never taken below this.
_FLOOR = 1e-12


def rescale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the probabilities a model gives once its logits are divided by T.

    log(p) equals the logits up to a constant per image, which the softmax ignores. T > 1
    softens, T < 1 sharpens; `rescale(rescale(p, T), 1 / T)` gives p back.
    """
    logits = np.log(np.clip(probabilities, _FLOOR, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray | None:
    """What a model with temperature T folded in gave before it; None if it was never
    calibrated (T = 1)."""
    return None if temperature == 1.0 else rescale(probabilities, 1 / temperature)


def negative_log_likelihood(label_indices: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(label_indices)), label_indices]
    return float(-np.mean(np.log(np.clip(picked, _FLOOR, 1.0))))


def fit_temperature(label_indices: np.ndarray, probabilities: np.ndarray) -> float:
    """The T that minimises the negative log-likelihood of the labels (searched as log T, so
    T stays positive, between 1/20 and 20)."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(label_indices, rescale(probabilities, np.exp(log_t))),
        bounds=(-3.0, 3.0),
        method="bounded",
    )
    return float(np.exp(result.x))


def fold_temperature(model, temperature: float) -> None:
    """Divide the logits of the model's softmax output layer by T, in place."""
    output = model.get_layer(OUTPUT_NAME)
    kernel, bias = output.get_weights()
    output.set_weights([kernel / temperature, bias / temperature])


def expected_calibration_error(
    label_indices: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Top-label ECE: images binned by their top probability (equal-width bins); the gap
    between mean confidence and accuracy in each bin, weighted by the bin's share of images."""
    table = reliability_table(label_indices, probabilities, bins)
    counts = table["count"]
    gaps = np.abs(table["confidence"] - table["accuracy"])
    return float(np.nansum(gaps * counts) / counts.sum())


def brier_score(label_indices: np.ndarray, probabilities: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot label
    (0 is perfect, 2 the worst)."""
    one_hot = np.eye(probabilities.shape[1])[label_indices]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def reliability_table(
    label_indices: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per confidence bin: its edges, image count, mean top probability and accuracy (NaN for an
    empty bin)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == label_indices
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 cannot occur (>= 1/9).
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / counts
        accuracy = np.bincount(index, correct.astype(float), bins) / counts
    return {
        "low": edges[:-1],
        "high": edges[1:],
        "count": counts,
        "confidence": mean_confidence,
        "accuracy": accuracy,
    }


def calibration_metrics(label_indices: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {
        "ece": expected_calibration_error(label_indices, probabilities),
        "brier": brier_score(label_indices, probabilities),
    }


def plot_reliability(
    label_indices: np.ndarray,
    calibrated: np.ndarray,
    uncalibrated: np.ndarray | None,
    title: str,
) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, the diagonal being
    perfect calibration; before and after temperature scaling when both are given."""
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    curves = [("calibrated", calibrated)] if uncalibrated is not None else [("model", calibrated)]
    if uncalibrated is not None:
        curves.insert(0, ("before calibration", uncalibrated))
    for name, probabilities in curves:
        table = reliability_table(label_indices, probabilities)
        filled = table["count"] > 0
        ece = expected_calibration_error(label_indices, probabilities)
        axes.plot(
            table["confidence"][filled],
            table["accuracy"][filled],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
    axes.set_xlabel("mean top-class probability in the bin")
    axes.set_ylabel("accuracy in the bin")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    axes.set_title(title)
    return figure
