import numpy as np
import pytest
from scipy.special import expit

from melanoma.config import SiteParams
from melanoma.sites.operating_point import (
    SiteSampleError,
    choose_site_threshold,
    melanomas_needed,
)

PARAMS = SiteParams(target_sensitivity=0.80, confidence=0.90)


def _sample(rng, melanomas: int, others: int, shift: float = 0.0):
    """A site's sample: melanoma logits ~ N(1 + shift, 1.5), the others' ~ N(-2 + shift, 1.5)."""
    logits = np.concatenate(
        [rng.normal(1 + shift, 1.5, melanomas), rng.normal(-2 + shift, 1.5, others)]
    )
    return np.arange(melanomas + others) < melanomas, expit(logits)


def test_the_promise_holds_on_the_sites_other_melanomas_in_the_stated_share_of_samples():
    rng = np.random.default_rng(0)
    # The site's melanomas, all of them: the true sensitivity of any threshold is known.
    population = expit(rng.normal(0.5, 1.5, 200_000))
    kept = []
    for _ in range(1000):
        is_melanoma, scores = _sample(rng, 20, 180, shift=-0.5)
        threshold = choose_site_threshold(is_melanoma, scores, PARAMS).threshold
        kept.append(np.mean(population >= threshold) >= PARAMS.target_sensitivity)
    # 90% confidence: over 1000 samples, 0.90 +- 0.03 (three binomial standard deviations).
    assert np.mean(kept) == pytest.approx(0.90, abs=0.03)


def test_more_melanomas_give_a_threshold_nearer_the_true_one():
    rng = np.random.default_rng(1)
    true_threshold = expit(1 - 1.5 * 0.8416)  # the 20th percentile of the melanomas' scores
    gaps = {}
    for melanomas in (20, 80):
        thresholds = [
            choose_site_threshold(*_sample(rng, melanomas, 200), PARAMS).threshold
            for _ in range(200)
        ]
        gaps[melanomas] = true_threshold - np.median(thresholds)
    assert 0 < gaps[80] < gaps[20]


def test_the_sample_figures_are_those_of_the_threshold():
    is_melanoma = np.array([True] * 12 + [False] * 4)
    scores = np.array([0.9] * 6 + [0.6] * 6 + [0.05, 0.1, 0.7, 0.95])
    chosen = choose_site_threshold(is_melanoma, scores, PARAMS)
    assert (chosen.images, chosen.melanomas) == (16, 12)
    assert chosen.sample_sensitivity == np.mean(scores[:12] >= chosen.threshold)
    assert chosen.sample_specificity == np.mean(scores[12:] < chosen.threshold)


def test_a_sample_that_cannot_support_the_promise_is_refused_with_the_count_it_needs():
    assert melanomas_needed(PARAMS) == 11  # 0.8 ** 11 < 0.1 <= 0.8 ** 10
    rng = np.random.default_rng(2)
    with pytest.raises(SiteSampleError, match=r"holds 10 melanomas: at least 11 are needed"):
        choose_site_threshold(*_sample(rng, 10, 100), PARAMS)
    with pytest.raises(SiteSampleError, match="holds no melanoma"):
        choose_site_threshold(np.zeros(30, bool), np.full(30, 0.2), PARAMS)
    with pytest.raises(SiteSampleError, match="holds only melanomas"):
        choose_site_threshold(np.ones(30, bool), np.full(30, 0.2), PARAMS)
