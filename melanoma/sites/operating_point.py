"""A clinic's own alert threshold, from a small labelled sample of its images.

One global threshold does not transfer: the same model flags half the benign lesions at one
clinic and misses a quarter of the melanomas at another. A clinic can label a sample (tens of
melanomas, a few hundred images); the threshold must then keep the sensitivity promise on the
clinic's *other* images, not only on the sample: sensitivity >= `target_sensitivity` with
probability `confidence` over the samples the clinic could have drawn. Two rules
(`sites.rule`), both on the sample's melanoma scores alone:

- `order_statistic` (the default): the highest k-th lowest melanoma score for which
  P(Beta(k, n + 1 - k) <= 1 - target) >= confidence. Exact whatever the scores' distribution.
- `logit_normal`: the one-sided lower normal tolerance bound of the melanomas' logit scores
  (its factor exact from the noncentral t distribution). Higher, so more specific, when the
  logits are normal; where they are not, the promise slips.

Rules that borrow validation's melanoma scores (a Beta prior, the global threshold) inherit
validation's optimism exactly where the model ranks worse. On simulated sites (bench/sites.py;
docs/evaluation.md has the table) only `order_statistic` kept the promise near its stated
confidence everywhere, so it is the default.

A sample with fewer melanomas than the promise needs at all (even the lowest of n melanoma
scores holds the target with probability 1 - target^n) is refused, with that count.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import beta, nct, norm

from melanoma.errors import MelanomaError
from melanoma.params.sites import SiteParams

# P(melanoma) is clipped before the logit: a calibrated softmax can round to 0 or 1.
_EPSILON = 1e-6


class SiteSampleError(MelanomaError, ValueError):
    """A labelled sample that cannot support the promise; the message says why and what would."""


@dataclass(frozen=True)
class SiteThreshold:
    threshold: float
    images: int
    melanomas: int
    sample_sensitivity: float  # on the sample itself, at the threshold
    sample_specificity: float


def melanomas_needed(params: SiteParams) -> int:
    """The fewest melanomas for which even the lowest melanoma score of the sample holds
    `target_sensitivity` of the site's melanomas with probability `confidence`."""
    return math.ceil(math.log(1 - params.confidence) / math.log(params.target_sensitivity))


def tolerance_factor(melanomas: int, params: SiteParams) -> float:
    """k of the one-sided normal tolerance bound mean - k * sd that is below a share
    `target_sensitivity` of the population with probability `confidence`."""
    n = melanomas
    z = norm.ppf(params.target_sensitivity)
    return float(nct.ppf(params.confidence, n - 1, z * math.sqrt(n)) / math.sqrt(n))


def order_statistic_threshold(melanoma_scores: np.ndarray, params: SiteParams) -> float:
    """The highest k-th lowest melanoma score that holds the target with the confidence."""
    ordered = np.sort(melanoma_scores)
    n, target = len(ordered), params.target_sensitivity
    # Every k at once: one scipy call instead of one per melanoma (the benches call this
    # thousands of times).
    k = np.arange(1, n + 1)
    holding = k[beta.cdf(1 - target, k, n + 1 - k) >= params.confidence]
    return float(ordered[holding.max() - 1])


def melanoma_logit(melanoma_scores: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(melanoma_scores, dtype=np.float64), _EPSILON, 1 - _EPSILON))


def logit_normal_threshold(melanoma_scores: np.ndarray, params: SiteParams) -> float:
    """The lower normal tolerance bound of the melanomas' logit scores, back on P(melanoma)."""
    logits = melanoma_logit(melanoma_scores)
    bound = logits.mean() - tolerance_factor(len(logits), params) * logits.std(ddof=1)
    return float(expit(bound))


RULES = {"order_statistic": order_statistic_threshold, "logit_normal": logit_normal_threshold}


def choose_site_threshold(
    is_melanoma: np.ndarray, melanoma_scores: np.ndarray, params: SiteParams
) -> SiteThreshold:
    """The site's alert threshold from its labelled sample (P(melanoma) of each image)."""
    is_melanoma = np.asarray(is_melanoma, dtype=bool)
    scores = np.asarray(melanoma_scores, dtype=np.float64)
    melanomas = int(is_melanoma.sum())
    if melanomas == 0 or melanomas == len(scores):
        kind = "no melanoma" if melanomas == 0 else "only melanomas"
        raise SiteSampleError(
            f"the sample holds {kind} ({len(scores)} images): a threshold needs both melanomas "
            "and other lesions"
        )
    needed = melanomas_needed(params)
    if melanomas < needed:
        raise SiteSampleError(
            f"the sample holds {melanomas} melanomas: at least {needed} are needed to promise "
            f"sensitivity >= {params.target_sensitivity} with {params.confidence:.0%} "
            "confidence on the site's other images"
        )
    return threshold_on_sample(is_melanoma, scores, RULES[params.rule](scores[is_melanoma], params))


def threshold_on_sample(
    is_melanoma: np.ndarray, scores: np.ndarray, threshold: float
) -> SiteThreshold:
    """A threshold with the sample's figures at it."""
    is_melanoma = np.asarray(is_melanoma, dtype=bool)
    alerts = np.asarray(scores, dtype=np.float64) >= threshold
    return SiteThreshold(
        threshold=threshold,
        images=len(alerts),
        melanomas=int(is_melanoma.sum()),
        sample_sensitivity=float(alerts[is_melanoma].mean()),
        sample_specificity=float((~alerts[~is_melanoma]).mean()),
    )
