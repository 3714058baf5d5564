"""The site head and its gate (melanoma.sites.head) on simulated samples: features and the
model's P(melanoma) drawn so that we know what separates the classes."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from melanoma.inference.unfamiliar import UnfamiliarDetector
from melanoma.params.sites import SiteParams
from melanoma.sites.head import FeatureIdentity, SiteHead, decide_head, head_threshold
from melanoma.sites.operating_point import choose_site_threshold

PARAMS = SiteParams()  # auto, margin 0.02, 8 dimensions, C 0.1, 5 folds
IDENTITY = FeatureIdentity("pooled", 16, "0123456789abcdef")


def _site(rng, melanomas: int, others: int, feature_shift: float):
    """(features (n, 16), the model's P(melanoma), is_melanoma). The model's logit separates
    the classes a little (shift 1, sd 1.5); feature 3 shifts melanomas by `feature_shift` sds,
    which the model ignores, as a clinic's camera or population can make it do."""
    is_melanoma = np.arange(melanomas + others) < melanomas
    features = rng.normal(0, 1, (len(is_melanoma), 16))
    features[:, 3] += feature_shift * is_melanoma
    model_melanoma = expit(rng.normal(-1.5, 1.5, len(is_melanoma)) + 1.0 * is_melanoma)
    return features, model_melanoma, is_melanoma


def test_a_head_is_adopted_where_a_feature_the_model_ignores_separates_the_classes():
    rng = np.random.default_rng(0)
    decision = decide_head(*_site(rng, 20, 80, feature_shift=2.5), IDENTITY, PARAMS)
    assert decision.adopted, decision.reason
    assert decision.head_auc > decision.model_auc + PARAMS.adapt_margin
    assert decision.out_of_fold.shape == (100,)
    # It ranks the site's other images better than the model does.
    features, model_melanoma, is_melanoma = _site(rng, 200, 800, feature_shift=2.5)
    adapted = decision.head.melanoma_probability(features, model_melanoma)
    assert roc_auc_score(is_melanoma, adapted) > roc_auc_score(is_melanoma, model_melanoma) + 0.1


def test_no_head_where_the_features_tell_nothing_the_model_does_not():
    decision = decide_head(*_site(np.random.default_rng(1), 20, 80, 0.0), IDENTITY, PARAMS)
    assert not decision.adopted
    assert decision.head is None and decision.out_of_fold is None
    assert decision.head_auc is not None  # measured, not good enough
    assert "not better by more than 0.02 (sites.adapt_margin)" in decision.reason


def test_too_few_of_a_class_for_the_folds_means_no_head_and_says_why():
    features, model_melanoma, is_melanoma = _site(np.random.default_rng(2), 20, 4, 2.5)
    decision = decide_head(features, model_melanoma, is_melanoma, IDENTITY, PARAMS)
    assert not decision.adopted and decision.head_auc is None
    assert decision.reason == (
        "4 other lesions in the sample: the 5-fold check of the head (sites.head_folds) needs "
        "at least 5 of each class"
    )
    assert decision.model_auc == roc_auc_score(is_melanoma, model_melanoma)


def test_adapt_off_or_no_features_means_no_head():
    sample = _site(np.random.default_rng(3), 20, 80, 2.5)
    off = decide_head(*sample, IDENTITY, PARAMS.model_copy(update={"adapt": "off"}))
    assert (off.adopted, off.reason) == (False, "sites.adapt is off")
    _, model_melanoma, is_melanoma = sample
    none = decide_head(None, model_melanoma, is_melanoma, None, PARAMS)
    assert not none.adopted and "no unfamiliar-image detector" in none.reason


def test_the_head_is_the_same_given_the_same_sample_and_survives_storage():
    sample = _site(np.random.default_rng(4), 20, 80, 2.5)
    first, second = (decide_head(*sample, IDENTITY, PARAMS) for _ in range(2))
    assert first.adopted and second.adopted
    np.testing.assert_array_equal(first.out_of_fold, second.out_of_fold)
    assert first.head.to_bytes() == second.head.to_bytes()

    stored = SiteHead.from_bytes(first.head.to_bytes())
    assert stored.features == IDENTITY
    features, model_melanoma, _ = sample
    np.testing.assert_array_equal(
        stored.melanoma_probability(features, model_melanoma),
        first.head.melanoma_probability(features, model_melanoma),
    )
    # Another seed draws other folds: other out-of-fold scores.
    reseeded = decide_head(*sample, IDENTITY, PARAMS.model_copy(update={"seed": 5}))
    assert not np.array_equal(reseeded.out_of_fold, first.out_of_fold)


@pytest.mark.parametrize("data", [b"", b"not an npz file", b"PK\x03\x04 damaged"])
def test_bytes_that_are_not_a_head_are_refused(data):
    with pytest.raises(ValueError, match="not a site head"):
        SiteHead.from_bytes(data)


def test_the_feature_identity_tells_detectors_apart():
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(20, 16)).astype(np.float32)
    detector = UnfamiliarDetector("pooled", reference, 3, 0.5)
    identity = FeatureIdentity.of(detector)
    assert (identity.depth, identity.width) == ("pooled", 16)
    assert FeatureIdentity.of(UnfamiliarDetector("pooled", reference.copy(), 5, 0.1)) == identity
    assert FeatureIdentity.of(UnfamiliarDetector("block14_add", reference, 3, 0.5)) != identity
    assert FeatureIdentity.of(UnfamiliarDetector("pooled", reference + 1e-3, 3, 0.5)) != identity


def test_a_head_whose_arrays_disagree_is_refused():
    width, dimensions = IDENTITY.width, 3
    head = SiteHead(
        features=IDENTITY,
        feature_mean=np.zeros(width),
        components=np.zeros((dimensions, width)),
        input_mean=np.zeros(dimensions + 1),
        input_scale=np.ones(dimensions + 1),
        coefficients=np.ones(dimensions + 1),
        intercept=0.0,
    )
    assert SiteHead.from_bytes(head.to_bytes()) is not None
    for damaged in (
        replace(head, coefficients=np.ones(dimensions)),
        replace(head, components=np.zeros(width)),
        replace(head, features=replace(IDENTITY, width=width + 1)),
    ):
        with pytest.raises(ValueError, match="its arrays' shapes disagree"):
            SiteHead.from_bytes(damaged.to_bytes())


def test_an_adopted_heads_threshold_is_taken_at_a_stricter_confidence():
    """(1 + 0.90) / 2 = 0.95: with 20 melanomas the lowest out-of-fold melanoma score instead
    of the second lowest; with too few melanomas for 0.95 (12), the lowest too; logit_normal
    lower as well."""
    rng = np.random.default_rng(9)
    for melanomas in (20, 12):
        is_melanoma = np.arange(melanomas + 40) < melanomas
        scores = rng.uniform(size=len(is_melanoma))
        chosen = head_threshold(is_melanoma, scores, PARAMS)
        assert chosen.threshold == scores[is_melanoma].min()
        assert chosen.sample_sensitivity == 1.0 and chosen.melanomas == melanomas
        assert chosen.sample_specificity == np.mean(scores[~is_melanoma] < chosen.threshold)
    is_melanoma = np.arange(60) < 20
    scores = rng.uniform(size=60)
    assert head_threshold(is_melanoma, scores, PARAMS).threshold < (
        choose_site_threshold(is_melanoma, scores, PARAMS).threshold
    )
    logit_normal = PARAMS.model_copy(update={"rule": "logit_normal"})
    assert head_threshold(is_melanoma, scores, logit_normal).threshold < (
        choose_site_threshold(is_melanoma, scores, logit_normal).threshold
    )


def test_an_adopted_head_keeps_the_promise_on_the_sites_other_images():
    """Samples of 20 melanomas and 80 other lesions from a site where the head helps: among the
    samples whose head the gate adopts, the head's alert at the site's threshold catches >= 80%
    of the site's other melanomas in >= 90% of them. The rule at the promised confidence on
    the out-of-fold scores does not: the gate picks the samples whose out-of-fold scores look
    best, and the head refitted on the whole sample scores more confidently than the fold
    heads did."""
    rng = np.random.default_rng(10)
    features, model_melanoma, is_melanoma = _site(rng, 2000, 8000, feature_shift=1.0)
    melanomas, others = np.flatnonzero(is_melanoma), np.flatnonzero(~is_melanoma)
    kept, kept_at_the_promised_confidence = [], []
    for _ in range(120):
        sample = np.concatenate(
            [rng.choice(melanomas, 20, replace=False), rng.choice(others, 80, replace=False)]
        )
        rest = np.setdiff1d(np.arange(len(is_melanoma)), sample)
        decision = decide_head(
            features[sample], model_melanoma[sample], is_melanoma[sample], IDENTITY, PARAMS
        )
        if not decision.adopted:
            continue
        adapted = decision.head.melanoma_probability(features[rest], model_melanoma[rest])
        rest_melanoma = adapted[is_melanoma[rest]]
        for share, choose in (
            (kept, head_threshold),
            (kept_at_the_promised_confidence, choose_site_threshold),
        ):
            threshold = choose(is_melanoma[sample], decision.out_of_fold, PARAMS).threshold
            share.append(np.mean(rest_melanoma >= threshold) >= PARAMS.target_sensitivity)
    assert len(kept) >= 40
    assert np.mean(kept) >= 0.9 > np.mean(kept_at_the_promised_confidence)
