import keras
import numpy as np
import pytest

from melanoma.evaluation.metrics import save_figure
from melanoma.labels import LABELS
from melanoma.model.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    plot_reliability,
    reliability_table,
    rescale,
    uncalibrated,
)


def _overconfident(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), but the model reports softmax(3 z): too sure of itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, len(LABELS)))
    honest = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    label_indices = np.array([rng.choice(len(LABELS), p=p) for p in honest])
    return label_indices, rescale(honest, 1 / 3)


def test_rescale_keeps_the_ranking_and_can_be_undone():
    _, probabilities = _overconfident(50)
    softened = rescale(probabilities, 2.0)
    np.testing.assert_allclose(softened.sum(axis=1), 1)
    assert np.array_equal(softened.argmax(axis=1), probabilities.argmax(axis=1))
    assert (softened.max(axis=1) < probabilities.max(axis=1)).all()
    np.testing.assert_allclose(rescale(softened, 0.5), probabilities, atol=1e-9)
    np.testing.assert_allclose(uncalibrated(softened, 2.0), probabilities, atol=1e-9)
    assert uncalibrated(probabilities, 1.0) is None


def test_fitted_temperature_recovers_the_overconfidence_and_lowers_ece():
    label_indices, probabilities = _overconfident()
    temperature = fit_temperature(label_indices, probabilities)

    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(label_indices, probabilities)
    after = expected_calibration_error(label_indices, rescale(probabilities, temperature))
    assert before > 0.15 and after < 0.03
    assert brier_score(label_indices, rescale(probabilities, temperature)) < brier_score(
        label_indices, probabilities
    )


def test_ece_and_brier_on_hand_computed_cases():
    one_hot = np.eye(len(LABELS))[[0, 1, 2]]
    assert expected_calibration_error(np.array([0, 1, 2]), one_hot) == 0.0
    assert brier_score(np.array([0, 1, 2]), one_hot) == 0.0
    assert brier_score(np.array([1, 1, 1]), one_hot[[0, 0, 0]]) == pytest.approx(2.0)
    # Two images at confidence 0.6 in one bin, one right: |0.6 - 0.5| = 0.1.
    probabilities = np.full((2, len(LABELS)), 0.05)
    probabilities[:, 0] = 0.6
    assert expected_calibration_error(np.array([0, 3]), probabilities) == pytest.approx(0.1)
    table = reliability_table(np.array([0, 3]), probabilities)
    assert table["count"].sum() == 2 and table["count"][np.searchsorted(table["high"], 0.6)] == 2


def test_folding_the_temperature_into_the_output_layer_calibrates_the_model_itself():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    before = model.predict(x, verbose=0)

    fold_temperature(model, 2.5)

    np.testing.assert_allclose(model.predict(x, verbose=0), rescale(before, 2.5), atol=1e-5)


def test_reliability_diagram_is_a_png(tmp_path):
    label_indices, probabilities = _overconfident(200)
    figure = plot_reliability(
        label_indices, rescale(probabilities, 3.0), probabilities, "test split"
    )
    save_figure(figure, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").read_bytes().startswith(b"\x89PNG")
