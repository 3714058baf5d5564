import numpy as np

from melanoma.config import OperatingPoint
from melanoma.evaluation.operating_point import choose_threshold, split_halves
from melanoma.evaluation.report import EvaluationSet, threshold_rules
from melanoma.labels import MELANOMA_INDEX
from tests.helpers import melanoma_scores


def test_each_rule_is_judged_on_the_reporting_half_it_never_saw():
    # Validation melanomas score high; on the external set every score is lower (a shift).
    validation = melanoma_scores([0.9, 0.85, 0.8, 0.75, 0.7] * 4, [0.2] * 20)
    rng = np.random.default_rng(0)
    label_indices, probabilities = melanoma_scores(
        list(rng.uniform(0.2, 0.6, 40)), list(rng.uniform(0.0, 0.4, 40))
    )
    external = EvaluationSet(
        "ext", [""] * len(label_indices), [""] * len(label_indices), label_indices
    )
    params = OperatingPoint(target_sensitivity=0.8, confidence=0.9)

    rules = threshold_rules(params, 7, validation, [external], {"ext": probabilities})

    assert set(rules) == {"validation", "ext"}
    choose, report = split_halves(label_indices, 7)
    expected = choose_threshold(label_indices[choose], probabilities[choose], 0.8, 0.9).value
    assert rules["ext"].threshold == expected
    for rule in rules.values():
        scores = probabilities[report, MELANOMA_INDEX]
        is_melanoma = label_indices[report] == MELANOMA_INDEX
        delivered = rule.reporting_halves["ext"]
        assert delivered.melanomas == is_melanoma.sum() == 20
        assert delivered.sensitivity == np.mean(scores[is_melanoma] >= rule.threshold)
        assert delivered.specificity == np.mean(scores[~is_melanoma] < rule.threshold)
    # The validation threshold does not survive the shift; the external half's does.
    assert rules["validation"].reporting_halves["ext"].sensitivity < 0.5
    assert rules["ext"].reporting_halves["ext"].sensitivity >= 0.8
