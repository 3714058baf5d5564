import json
import logging
import math

import numpy as np
import pytest

from melanoma.evaluation.metrics import (
    bootstrap_intervals,
    images_sha256,
    metrics_report,
    plot_confusion_matrix,
    plot_melanoma_roc,
)
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.metrics import (
    evaluation_metrics,
    melanoma_auc,
    per_source_metrics,
    predictions_table,
    read_predictions,
)

BCC, NEVUS = LABELS.index("basal_cell_carcinoma"), LABELS.index("nevus")
MEL = MELANOMA_INDEX


def _row(predicted: int, p_predicted: float, p_melanoma: float) -> list[float]:
    """Probabilities with the given top class and P(melanoma); the rest spread evenly."""
    row = np.zeros(len(LABELS))
    row[MEL] = p_melanoma
    row[predicted] = p_predicted
    others = [i for i in range(len(LABELS)) if i not in (MEL, predicted)]
    row[others] = (1 - row.sum()) / len(others)
    return row.tolist()


# (label, predicted, P(predicted), P(melanoma)): 8 images of 3 classes, worked out by hand below.
CASES = [
    (MEL, MEL, 0.7, 0.7),
    (MEL, NEVUS, 0.5, 0.35),
    (MEL, NEVUS, 0.6, 0.2),
    (NEVUS, NEVUS, 0.8, 0.1),
    (NEVUS, MEL, 0.6, 0.6),
    (BCC, BCC, 0.9, 0.05),
    (BCC, BCC, 0.6, 0.25),
    (BCC, NEVUS, 0.5, 0.4),
]
TRUE = np.array([case[0] for case in CASES])
PROBABILITIES = np.array([_row(p, pp, pm) for _, p, pp, pm in CASES])


def test_fixed_prediction_set_matches_hand_computed_figures():
    figures = evaluation_metrics(TRUE, PROBABILITIES, threshold=0.3)

    assert figures["accuracy"] == pytest.approx(4 / 8)
    # recalls: melanoma 1/3, nevus 1/2, bcc 2/3
    assert figures["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)
    # precisions: melanoma 1/2, nevus 1/4, bcc 2/2; F1: 0.4, 1/3, 0.8
    assert figures["melanoma_precision"] == pytest.approx(1 / 2)
    assert figures["melanoma_recall"] == pytest.approx(1 / 3)
    assert figures["melanoma_f1"] == pytest.approx(0.4)
    assert figures["nevus_precision"] == pytest.approx(1 / 4)
    assert figures["nevus_f1"] == pytest.approx(1 / 3)
    assert figures["basal_cell_carcinoma_precision"] == pytest.approx(1.0)
    assert figures["basal_cell_carcinoma_f1"] == pytest.approx(0.8)
    assert figures["macro_f1"] == pytest.approx((0.4 + 1 / 3 + 0.8) / 3)
    # melanoma scores 0.7, 0.35, 0.2 vs others 0.1, 0.6, 0.05, 0.25, 0.4: 10 of 15 pairs ordered
    assert figures["melanoma_auc"] == pytest.approx(10 / 15)
    # alerts at >= 0.3: melanoma 2 of 3; others alerted 2 of 5 (0.6 and 0.4)
    assert figures["melanoma_sensitivity"] == pytest.approx(2 / 3)
    assert figures["melanoma_specificity"] == pytest.approx(3 / 5)


def test_classes_never_seen_nor_predicted_have_undefined_precision_and_recall():
    figures = evaluation_metrics(TRUE, PROBABILITIES, threshold=0.3)
    assert math.isnan(figures["dermatofibroma_precision"])
    assert math.isnan(figures["dermatofibroma_recall"])
    assert len(figures) == 6 + 3 * len(LABELS)


def test_alert_is_raised_at_the_threshold_itself():
    at_threshold = evaluation_metrics(TRUE, PROBABILITIES, threshold=0.35)
    just_above = evaluation_metrics(TRUE, PROBABILITIES, threshold=0.36)
    assert at_threshold["melanoma_sensitivity"] == pytest.approx(2 / 3)
    assert just_above["melanoma_sensitivity"] == pytest.approx(1 / 3)


def test_melanoma_auc_is_sklearn_s_with_ties_counted_half():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    is_melanoma = rng.random(300) < 0.2
    scores = np.round(rng.random(300) + 0.3 * is_melanoma, 1)  # rounded: many ties
    assert melanoma_auc(is_melanoma, scores) == pytest.approx(roc_auc_score(is_melanoma, scores))
    assert melanoma_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(melanoma_auc(np.array([True, True]), np.array([0.1, 0.9])))


# scikit-learn warns of the absent classes, which the cases have on purpose.
@pytest.mark.filterwarnings(
    "ignore:y_pred contains classes not in y_true",
    "ignore::sklearn.exceptions.UndefinedMetricWarning",
)
def test_every_metric_is_sklearn_s_with_classes_absent_or_never_predicted():
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        precision_recall_fscore_support,
        recall_score,
    )

    rng = np.random.default_rng(0)
    for n, classes in ((40, 9), (25, 4), (12, 2), (6, 1)):
        label_indices = rng.choice(rng.choice(len(LABELS), classes, replace=False), n)
        probabilities = rng.dirichlet(np.full(len(LABELS), 0.3), n)
        figures = evaluation_metrics(label_indices, probabilities, threshold=0.2)

        predicted = probabilities.argmax(axis=1)
        is_melanoma, alert = label_indices == MEL, probabilities[:, MEL] >= 0.2
        present = np.unique(label_indices)
        precision, recall, f1, _ = precision_recall_fscore_support(
            label_indices, predicted, labels=range(len(LABELS)), zero_division=np.nan
        )
        expected = {
            "accuracy": accuracy_score(label_indices, predicted),
            "balanced_accuracy": balanced_accuracy_score(label_indices, predicted),
            "macro_f1": f1_score(label_indices, predicted, labels=present, average="macro"),
            "melanoma_sensitivity": recall_score(is_melanoma, alert, zero_division=np.nan),
            "melanoma_specificity": recall_score(
                is_melanoma, alert, pos_label=False, zero_division=np.nan
            ),
        }
        for kind, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            expected |= {f"{label}_{kind}": v for label, v in zip(LABELS, values, strict=True)}
        for name, value in expected.items():
            assert figures[name] == pytest.approx(value, nan_ok=True), (n, classes, name)


def test_auc_is_undefined_without_melanoma_in_the_test_set():
    keep = TRUE != MEL
    figures = evaluation_metrics(TRUE[keep], PROBABILITIES[keep], threshold=0.3)
    assert math.isnan(figures["melanoma_auc"])
    assert math.isnan(figures["melanoma_sensitivity"])


def test_bootstrap_intervals_bracket_the_estimate_and_repeat_with_the_seed():
    figures = evaluation_metrics(TRUE, PROBABILITIES, threshold=0.3)
    intervals = bootstrap_intervals(TRUE, PROBABILITIES, 0.3, samples=40, seed=1)

    for name in ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_auc"):
        low, high = intervals[name]
        assert low <= figures[name] <= high
        assert low < high  # 8 images leave plenty of uncertainty
    assert intervals == bootstrap_intervals(TRUE, PROBABILITIES, 0.3, samples=40, seed=1)
    assert intervals != bootstrap_intervals(TRUE, PROBABILITIES, 0.3, samples=40, seed=2)
    assert all(math.isnan(v) for v in intervals["dermatofibroma_recall"])


def test_perfect_predictions_have_a_degenerate_interval():
    label_indices = np.array([MEL, MEL, NEVUS, BCC, BCC, NEVUS])
    probabilities = np.eye(len(LABELS))[label_indices]
    assert bootstrap_intervals(label_indices, probabilities, 0.5, samples=50, seed=0)[
        "accuracy"
    ] == (1, 1)


def test_report_is_strict_json_with_intervals_next_to_each_figure():
    report = metrics_report(TRUE, PROBABILITIES, 0.3, bootstrap_samples=30, seed=0)

    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["images"] == 8
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["accuracy_ci_low"] <= 0.5 <= report["accuracy_ci_high"]
    assert report["dermatofibroma_recall"] is None
    assert report["dermatofibroma_recall_ci_low"] is None
    keys = list(report)
    assert keys[keys.index("macro_f1") + 1 : keys.index("macro_f1") + 3] == [
        "macro_f1_ci_low",
        "macro_f1_ci_high",
    ]


def test_report_without_bootstrap_has_no_intervals_and_names_absent_classes(caplog):
    caplog.set_level(logging.INFO)
    report = metrics_report(TRUE, PROBABILITIES, 0.3, bootstrap_samples=0, seed=0)
    assert not [key for key in report if "_ci_" in key]
    assert "test: no images of actinic_keratosis, dermatofibroma, " in caplog.text
    assert "average the other 3 classes" in caplog.text


def test_multi_class_figures_average_the_classes_present_only():
    # Predicting a class that no image has must not drag macro F1 down with a class of F1 0.
    label_indices = np.array([MEL, MEL, NEVUS, NEVUS])
    probabilities = np.eye(len(LABELS))[[MEL, BCC, NEVUS, NEVUS]]
    figures = evaluation_metrics(label_indices, probabilities, threshold=0.5)
    assert figures["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)  # not (2/3 + 1 + 0) / 3
    assert figures["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)


def test_predictions_round_trip_through_their_table(tmp_path):
    paths = [f"img{i}.png" for i in range(len(TRUE))]
    predictions_table(paths, TRUE, PROBABILITIES).to_csv(tmp_path / "p.csv", index=False)
    label_indices, probabilities = read_predictions(tmp_path / "p.csv")
    np.testing.assert_array_equal(label_indices, TRUE)
    np.testing.assert_allclose(probabilities, PROBABILITIES, atol=1e-6)


def test_predictions_table_names_labels_and_flags_alerts():
    paths = [f"img{i}.png" for i in range(len(TRUE))]
    table = predictions_table(paths, TRUE, PROBABILITIES, threshold=0.3)

    assert list(table.columns[:3]) == ["image_path", "label", "predicted"]
    assert list(table.columns[3:-1]) == [f"p_{label}" for label in LABELS]
    assert table.columns[-1] == "melanoma_alert"
    assert table.loc[1, ["label", "predicted"]].tolist() == ["melanoma", "nevus"]
    assert table["melanoma_alert"].tolist() == [True, True, False, False, True, False, False, True]
    assert table["p_melanoma"].tolist() == pytest.approx(PROBABILITIES[:, MEL])


def test_images_hash_depends_on_bytes_and_labels_not_order(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    paths, label_indices = [str(a), str(b)], np.array([MEL, NEVUS])
    digest = images_sha256(paths, label_indices)

    assert images_sha256(paths[::-1], label_indices[::-1]) == digest
    assert images_sha256(paths, np.array([MEL, BCC])) != digest
    b.write_bytes(b"changed")
    assert images_sha256(paths, label_indices) != digest


def test_plots_are_written_as_png(tmp_path):
    plot_confusion_matrix(TRUE, PROBABILITIES, tmp_path / "cm" / "confusion.png")
    plot_melanoma_roc(TRUE, PROBABILITIES, 0.3, tmp_path / "roc.png")
    for path in (tmp_path / "cm" / "confusion.png", tmp_path / "roc.png"):
        assert path.read_bytes().startswith(b"\x89PNG")


def test_per_source_figures_keep_a_small_source_visible_beside_a_large_one():
    nevus = LABELS.index("nevus")
    # A large source the model ranks perfectly, a small one it ranks backwards.
    true = np.array([MELANOMA_INDEX, nevus] * 10 + [MELANOMA_INDEX, nevus, nevus])
    p_melanoma = np.array([0.9, 0.1] * 10 + [0.2, 0.6, 0.7])
    probabilities = np.zeros((len(true), len(LABELS)))
    probabilities[:, MELANOMA_INDEX] = p_melanoma
    probabilities[:, nevus] = 1 - p_melanoma
    sources = np.array(["large"] * 20 + ["small"] * 3)

    figures = per_source_metrics(true, probabilities, sources)

    assert figures["large"] == {
        "images": 20,
        "melanomas": 10,
        "melanoma_auc": 1.0,
        "balanced_accuracy": 1.0,
    }
    assert figures["small"]["melanoma_auc"] == 0.0
    assert figures["small"]["images"] == 3 and figures["small"]["melanomas"] == 1
    no_melanoma = per_source_metrics(true[1:2], probabilities[1:2], sources[1:2])
    assert no_melanoma["large"]["melanoma_auc"] is None
