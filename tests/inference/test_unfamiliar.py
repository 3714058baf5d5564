import numpy as np
import pytest

from melanoma import paths
from melanoma.inference.unfamiliar import (
    POOLED,
    UNFAMILIAR_FILE_NAME,
    DetectorFileError,
    UnfamiliarDetector,
    fit_detector,
    probe,
)
from tests.helpers import train_params


def _cluster(n: int, seed: int) -> np.ndarray:
    """n features pointing roughly along (1, 1, 1, 1): lesion-like, for the test."""
    return 1 + np.random.default_rng(seed).normal(0, 0.1, (n, 4))


def test_the_threshold_flags_the_validation_share_and_far_images_are_flagged():
    detector = fit_detector(_cluster(200, 0), _cluster(500, 1), POOLED, 5, 0.02)
    flagged = detector.is_unfamiliar(detector.scores(_cluster(500, 1)))
    assert flagged.sum() == pytest.approx(10, abs=1)  # 2% of the threshold's own images

    # Another direction (a solid colour, a chart) is far; more of the same is near.
    far = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.1]])
    assert detector.is_unfamiliar(detector.scores(far)).all()
    assert detector.is_unfamiliar(detector.scores(_cluster(1000, 2))).mean() < 0.05


def test_the_score_is_the_cosine_distance_to_the_kth_nearest():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    detector = fit_detector(reference, reference, POOLED, 2, 0.1)
    # (2, 0) is at cosine 1, 1/sqrt(2) and 0 of the three: its 2nd nearest is at 1 - 1/sqrt(2).
    score = detector.scores(np.array([[2.0, 0.0]]))
    assert score == pytest.approx([1 - 1 / np.sqrt(2)], abs=1e-6)


def test_more_neighbours_than_fitted_images_is_refused():
    with pytest.raises(ValueError, match=r"unfamiliar.neighbours=5 exceeds the 3 training"):
        fit_detector(_cluster(3, 0), _cluster(3, 1), POOLED, 5, 0.1)


def test_a_saved_detector_scores_alike_and_a_bad_file_is_named(tmp_path):
    detector = fit_detector(_cluster(50, 0), _cluster(50, 1), "block14_add", 3, 0.05)
    detector.save(tmp_path / "models" / "unfamiliar.npz")
    loaded = UnfamiliarDetector.load(tmp_path / "models" / "unfamiliar.npz")
    assert (loaded.depth, loaded.neighbours, loaded.threshold) == (
        "block14_add",
        3,
        detector.threshold,
    )
    queries = _cluster(20, 3)
    np.testing.assert_allclose(loaded.scores(queries), detector.scores(queries), atol=1e-6)

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a detector")
    with pytest.raises(DetectorFileError, match="broken.npz: not an unfamiliar-image detector"):
        UnfamiliarDetector.load(broken)


def test_probe_gives_the_probabilities_and_a_backbone_layer_in_one_model():
    from melanoma.model.architectures import build_model

    model = build_model(
        train_params(architecture="efficientnet_lite0", pretrained=False, image_size=32)
    )
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    # Called eagerly in inference mode, as predict_on_batch calls them but without tracing
    # each model (seconds for a Lite0).
    probabilities, features = _outputs(probe(model, "block14_add"), [images])
    np.testing.assert_allclose(probabilities, _outputs(model, images), atol=1e-5)
    assert features.shape == (3, 192)

    with pytest.raises(ValueError, match="block99_add is not a layer"):
        probe(model, "block99_add")
    simple = build_model(train_params())
    with pytest.raises(ValueError, match="has no EfficientNet-Lite backbone"):
        probe(simple, "block14_add")
    _, pooled = _outputs(probe(simple, POOLED), [images])
    assert pooled.shape[0] == 3


def _outputs(model, inputs):
    """`model`'s inference outputs as numpy arrays, from a direct call."""
    import keras

    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(inputs, training=False))


def test_train_writes_the_detector_under_the_name_a_served_model_stores_it():
    assert paths.UNFAMILIAR_FILE.name == UNFAMILIAR_FILE_NAME
