"""A clinic's own alert threshold, from a small labelled sample of its images.

One global threshold does not transfer: the same model flags half the benign lesions at one
clinic and misses a quarter of the melanomas at another. A clinic can label a sample (tens of
melanomas, a few hundred images); the threshold must then keep the sensitivity promise on the
clinic's *other* images, not only on the sample.

The rule (`logit_normal`): the sample's melanoma scores, on the logit scale, are taken as a
normal sample, and the threshold is the one-sided lower tolerance bound that holds at least
`target_sensitivity` of the clinic's melanomas with probability `confidence` (the exact
factor, from the noncentral t distribution). It needs no assumption that the clinic ranks like
validation, which is what fails where the model ranks worse (docs/evaluation.md, a site's
operating point, has the simulated sites and the rules compared).

A sample with fewer melanomas than a distribution-free promise would need (the lowest of n
melanoma scores holds `target_sensitivity` with probability 1 - target^n) is refused, with
that count.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import nct, norm

from melanoma.config import SiteParams

# P(melanoma) is clipped before the logit: a calibrated softmax can round to 0 or 1.
_EPSILON = 1e-6


class SiteSampleError(ValueError):
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
    logits = logit(np.clip(scores[is_melanoma], _EPSILON, 1 - _EPSILON))
    bound = logits.mean() - tolerance_factor(melanomas, params) * logits.std(ddof=1)
    threshold = float(expit(bound))
    alerts = scores >= threshold
    return SiteThreshold(
        threshold=threshold,
        images=len(scores),
        melanomas=melanomas,
        sample_sensitivity=float(alerts[is_melanoma].mean()),
        sample_specificity=float((~alerts[~is_melanoma]).mean()),
    )
