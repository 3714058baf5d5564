import numpy as np
import pytest
from scipy.stats import binomtest

from melanoma.evaluation.operating_point import (
    choose_threshold,
    sensitivity_lower_bound,
    sensitivity_upper_bound,
    split_halves,
)
from melanoma.labels import LABELS, MELANOMA_INDEX
from tests.helpers import melanoma_scores

NEVUS = LABELS.index("nevus")


def test_bounds_are_the_exact_one_sided_clopper_pearson_bounds():
    # A one-sided 95% bound is one end of the two-sided 90% exact interval.
    interval = binomtest(27, 30).proportion_ci(confidence_level=0.90, method="exact")
    assert sensitivity_lower_bound(27, 30, 0.95) == pytest.approx(interval.low)
    assert sensitivity_upper_bound(27, 30, 0.95) == pytest.approx(interval.high)
    assert sensitivity_lower_bound(0, 30, 0.95) == 0.0
    assert sensitivity_upper_bound(30, 30, 0.95) == 1.0
    assert sensitivity_lower_bound(30, 30, 0.95) == pytest.approx(0.05 ** (1 / 30))


def test_threshold_is_the_highest_whose_lower_bound_reaches_the_target():
    melanoma = list(np.linspace(0.99, 0.30, 40))  # 40 melanomas, all distinct scores
    label_indices, probabilities = melanoma_scores(melanoma, [0.5, 0.2, 0.1])

    chosen = choose_threshold(label_indices, probabilities, target=0.85, confidence=0.95)

    # 38 of 40 is the fewest with a lower bound >= 0.85; 37 of 40 is not enough.
    assert sensitivity_lower_bound(38, 40, 0.95) >= 0.85 > sensitivity_lower_bound(37, 40, 0.95)
    assert chosen.caught == 38 and chosen.melanomas == 40 and chosen.target_reachable
    assert chosen.value == pytest.approx(melanoma[37])
    caught = probabilities[label_indices == MELANOMA_INDEX, MELANOMA_INDEX] >= chosen.value
    assert caught.sum() == 38
    # A point estimate of 0.85 would have allowed a higher threshold, with no margin.
    assert chosen.value < melanoma[33]


def test_too_few_melanomas_catch_them_all_and_say_the_target_is_out_of_reach():
    label_indices, probabilities = melanoma_scores([0.9, 0.6, 0.4, 0.3, 0.2], [0.1])
    chosen = choose_threshold(label_indices, probabilities, target=0.85, confidence=0.95)
    assert not chosen.target_reachable
    assert chosen.value == pytest.approx(0.2) and chosen.caught == 5


def test_ties_count_every_melanoma_at_the_threshold():
    label_indices, probabilities = melanoma_scores([0.8] * 30 + [0.1] * 10, [0.05])
    chosen = choose_threshold(label_indices, probabilities, target=0.5, confidence=0.95)
    assert chosen.value == pytest.approx(0.8) and chosen.caught == 30


def test_no_melanoma_cannot_choose():
    label_indices, probabilities = melanoma_scores([], [0.3, 0.2])
    with pytest.raises(ValueError, match="no melanoma"):
        choose_threshold(label_indices, probabilities, 0.85, 0.95)


def test_halves_are_disjoint_stratified_seeded_and_cover_every_image():
    label_indices = np.array(
        [MELANOMA_INDEX] * 20 + [NEVUS] * 40 + [0]
    )  # one lone actinic keratosis
    choose, report = split_halves(label_indices, seed=4)

    assert sorted([*choose, *report]) == list(range(len(label_indices)))
    assert (
        (label_indices[choose] == MELANOMA_INDEX).sum()
        == (label_indices[report] == MELANOMA_INDEX).sum()
        == 10
    )
    assert 60 in report  # a class of one cannot be split: it reports
    again = split_halves(label_indices, seed=4)
    assert np.array_equal(again[0], choose)
    assert not np.array_equal(split_halves(label_indices, seed=5)[0], choose)
