import numpy as np
import pytest

from melanoma.evaluation.operating_point import choose_threshold, split_halves
from melanoma.evaluation.report import EvaluationSet, rule_threshold, threshold_rules
from melanoma.labels import MELANOMA_INDEX
from melanoma.params.evaluation import OperatingPoint
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

    assert set(rules) == {"validation", "ext", "pooled", "shift_margin"}
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


def _shifted_external():
    """Validation melanomas spread over 0.05-0.95; the external set's score 0.2 lower."""
    validation = melanoma_scores(list(np.linspace(0.05, 0.95, 40)), [0.02] * 40)
    label_indices, probabilities = melanoma_scores(list(np.linspace(0.0, 0.75, 30)), [0.01] * 30)
    return validation, {"ext": (label_indices, probabilities)}


def test_pooled_chooses_on_validation_and_the_choosing_halves_as_one_set():
    validation, choosers = _shifted_external()
    params = OperatingPoint(target_sensitivity=0.8, confidence=0.9)

    threshold, chosen_on = rule_threshold("pooled", params, validation, choosers)

    label_indices = np.concatenate([validation[0], choosers["ext"][0]])
    probabilities = np.concatenate([validation[1], choosers["ext"][1]])
    assert threshold == choose_threshold(label_indices, probabilities, 0.8, 0.9)
    assert threshold.melanomas == 70
    assert "validation split and the choosing half of ext (140 images)" in chosen_on


def test_shift_margin_raises_validation_s_target_by_the_sensitivity_lost_on_the_choosing_half():
    validation, choosers = _shifted_external()
    params = OperatingPoint(target_sensitivity=0.7, confidence=0.9)

    own = choose_threshold(*validation, 0.7, 0.9)
    threshold, chosen_on = rule_threshold("shift_margin", params, validation, choosers)

    scores = validation[1][validation[0] == MELANOMA_INDEX, MELANOMA_INDEX]
    external = choosers["ext"][1][:, MELANOMA_INDEX][choosers["ext"][0] == MELANOMA_INDEX]
    margin = np.mean(scores >= own.value) - np.mean(external >= own.value)
    assert margin > 0.1
    assert threshold == choose_threshold(*validation, 0.7 + margin, 0.9)
    assert threshold.value < own.value  # more alerts, to make up for the shift
    assert f"target raised by {margin:.3f}" in chosen_on


def test_shift_margin_is_validation_s_own_threshold_when_nothing_is_lost():
    validation, _ = _shifted_external()
    params = OperatingPoint(target_sensitivity=0.7, confidence=0.9)

    threshold, _ = rule_threshold("shift_margin", params, validation, {"ext": validation})

    assert threshold == choose_threshold(*validation, 0.7, 0.9)


def test_a_rule_that_needs_external_melanomas_without_any_names_the_param():
    from melanoma.evaluation.external import ExternalSetError

    validation, _ = _shifted_external()
    params = OperatingPoint(target_sensitivity=0.7, confidence=0.9)
    for rule in ("pooled", "shift_margin"):
        with pytest.raises(ExternalSetError, match=f"choose_on='{rule}' needs an external set"):
            rule_threshold(rule, params, validation, {})
