"""The drift check: does a batch of unlabelled images look like the version's validation split?

Two two-sample tests against the validation split that `train` kept as the version's
reference (`models/drift_reference.npz`, in the served model beside the detector):

- the **melanoma score**: Kolmogorov-Smirnov (scipy), on P(melanoma): where the scores of a
  clinic fall is what decides whether the global threshold holds there;
- the **embedding**: the maximum mean discrepancy (MMD, Gretton et al. 2012) of the unit-length
  features at the unfamiliar score's depth, with a Gaussian kernel whose width is the median
  distance in the reference, and a permutation p-value: a new dermatoscope or population moves
  it before any label is known.

The batch is said to differ when either p-value is below `sites.drift_alpha` / 2 (Bonferroni
over the two tests). Unfamiliar images (not lesion images) are left out of both: they are the
warning's business, not the clinic's.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from melanoma.errors import MelanomaError
from melanoma.inference.unfamiliar import unit_rows

# The reference is subsampled to this many images: the permutation test's cost is quadratic.
MAX_REFERENCE = 600


class DriftReferenceError(MelanomaError):
    """A drift reference file that cannot be read; the message names it."""


@dataclass(frozen=True)
class DriftReference:
    """The validation split's P(melanoma) and features (at the unfamiliar score's depth)."""

    melanoma: np.ndarray
    features: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            np.savez(file, melanoma=self.melanoma, features=self.features.astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> "DriftReference":
        try:
            with np.load(path) as arrays:
                return cls(melanoma=arrays["melanoma"], features=arrays["features"])
        except (OSError, KeyError, ValueError) as error:
            raise DriftReferenceError(f"{path}: not a drift reference file ({error})") from None


@dataclass(frozen=True)
class DriftResult:
    images: int  # compared: the batch's readable, familiar images
    score_statistic: float  # KS distance between the P(melanoma) distributions
    score_p_value: float
    embedding_mmd2: float
    embedding_p_value: float
    alpha: float

    @property
    def drifted(self) -> bool:
        return min(self.score_p_value, self.embedding_p_value) < self.alpha / 2

    def verdict(self, compared_with: str) -> str:
        """One line: whether the batch looks like `compared_with`, the figures, what to do."""
        figures = (
            f"P(melanoma): KS {self.score_statistic:.3f}, p {self.score_p_value:.2g}; "
            f"embedding: MMD² {self.embedding_mmd2:.3g}, p {self.embedding_p_value:.2g}; "
            f"drift when p < {self.alpha / 2:g}"
        )
        if self.drifted:
            return (
                f"{self.images} images differ from {compared_with} ({figures}): the global "
                "threshold may not hold here, calibrate this site on a labelled sample "
                "(melanoma site calibrate NAME DIR)"
            )
        return f"{self.images} images look like {compared_with} ({figures})"


def check_drift(
    reference: DriftReference,
    melanoma: np.ndarray,
    features: np.ndarray,
    alpha: float,
    permutations: int = 500,
    seed: int = 0,
) -> DriftResult:
    """The two tests of a batch (its P(melanoma) and features) against the reference."""
    if len(melanoma) < 2:
        raise ValueError(f"a batch of {len(melanoma)} images: the drift check needs at least 2")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(reference.melanoma))[:MAX_REFERENCE]
    ks = ks_2samp(reference.melanoma, melanoma)
    mmd2, p_value = mmd_test(reference.features[chosen], features, permutations, rng)
    return DriftResult(
        images=len(melanoma),
        score_statistic=float(ks.statistic),
        score_p_value=float(ks.pvalue),
        embedding_mmd2=mmd2,
        embedding_p_value=p_value,
        alpha=alpha,
    )


def mmd_test(
    reference: np.ndarray, batch: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """(MMD², permutation p-value) of two samples of features, Gaussian kernel on unit rows,
    its width the median pairwise distance in the reference."""
    pooled = unit_rows(np.concatenate([reference, batch])).astype(np.float64)
    squared = np.maximum(
        (pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0
    )
    n = len(reference)
    width = np.median(squared[:n, :n][np.triu_indices(n, 1)])
    kernel = np.exp(-squared / max(width, 1e-12))
    # MMD² of a split is w' K w, w = 1/n on one side and -1/m on the other (the biased
    # estimate): every permutation at once, as the columns of one matrix.
    splits = [np.arange(len(pooled)) < n]
    splits += [rng.permutation(len(pooled)) < n for _ in range(permutations)]
    weights = np.where(np.array(splits).T, 1 / n, -1 / len(batch))
    mmd2 = np.einsum("ip,ip->p", weights, kernel @ weights)
    return float(mmd2[0]), float(np.mean(mmd2 >= mmd2[0]))
