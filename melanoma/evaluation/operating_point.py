"""The melanoma alert threshold: chosen with a margin for the number of melanomas it saw.

A sensitivity measured on 30 melanomas is uncertain by about ±0.1, so "the highest threshold
with sensitivity >= 0.85" promises 0.85 only half of the time. Here the threshold is the highest
one whose lower confidence bound of sensitivity (exact one-sided Clopper-Pearson) still reaches
the target: a promise that holds with the stated confidence on images like those that chose it.
"""

import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta
from sklearn.model_selection import train_test_split

from melanoma.labels import MELANOMA_INDEX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Threshold:
    value: float
    melanomas: int  # in the images that chose it
    caught: int  # of those, at or above the threshold
    sensitivity_lower_bound: float
    target_reachable: bool  # False: even alerting on every melanoma cannot show the target


def sensitivity_lower_bound(caught, melanomas: int, confidence: float):
    """One-sided exact (Clopper-Pearson) lower confidence bound of caught / melanomas: a float,
    or one bound per count when `caught` is an array of counts."""
    counts = np.asarray(caught)
    # beta.ppf is undefined for 0 caught, whose bound is 0.
    bounds = np.where(
        counts == 0, 0.0, beta.ppf(1 - confidence, np.maximum(counts, 1), melanomas - counts + 1)
    )
    return float(bounds) if bounds.ndim == 0 else bounds


def choose_threshold(
    label_indices: np.ndarray, probabilities: np.ndarray, target: float, confidence: float
) -> Threshold:
    """The highest P(melanoma) threshold whose sensitivity lower bound reaches `target`.

    The alert is P(melanoma) >= threshold, so a threshold equal to the k-th highest melanoma
    probability catches at least k melanomas; the smallest k whose bound reaches the target
    gives the highest threshold. If no k does (too few melanomas to show the target at this
    confidence), the threshold catches every melanoma and `target_reachable` is False.
    """
    scores = np.sort(probabilities[label_indices == MELANOMA_INDEX, MELANOMA_INDEX])[::-1]
    melanomas = len(scores)
    if melanomas == 0:
        raise ValueError("no melanoma among the images that choose the threshold")
    # The bound of every k >= 1 in one scipy call, not one call per melanoma.
    k = np.arange(1, melanomas + 1)
    reaching = k[sensitivity_lower_bound(k, melanomas, confidence) >= target]
    needed = int(reaching[0]) if len(reaching) else None
    reachable = needed is not None
    value = float(scores[(needed or melanomas) - 1])
    caught = int(np.sum(scores >= value))
    return Threshold(
        value=value,
        melanomas=melanomas,
        caught=caught,
        sensitivity_lower_bound=sensitivity_lower_bound(caught, melanomas, confidence),
        target_reachable=reachable,
    )


def split_halves(label_indices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two halves with the same class mix: (choosing half, reporting half).

    Classes with a single image cannot be split; such images go to the reporting half.
    """
    rows = np.arange(len(label_indices))
    counts = np.bincount(label_indices)
    single = counts[label_indices] < 2
    choose, report = train_test_split(
        rows[~single], test_size=0.5, stratify=label_indices[~single], random_state=seed
    )
    return np.sort(choose), np.sort(np.concatenate([report, rows[single]]))


def sensitivity_upper_bound(caught: int, melanomas: int, confidence: float) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound of caught / melanomas."""
    if caught == melanomas:
        return 1.0
    return float(beta.ppf(confidence, caught + 1, melanomas - caught))
