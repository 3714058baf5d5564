from functools import partial

import keras
import numpy as np
import pytest

from melanoma.labels import LABELS
from melanoma.model.architectures import build_model
from tests.helpers import train_params

SIZE = 32


_params = partial(train_params, image_size=SIZE, filters=[4, 8], dropout=0.2, learning_rate=0.001)


def _random_images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "overrides",
    [
        {"architecture": "simple_cnn"},
        {"architecture": "simple_cnn", "normalization": "none"},
        {"architecture": "resnet"},
        {"architecture": "resnet", "mixed_precision": True},
        {"architecture": "mobilenetv3small"},
        {"architecture": "efficientnetb0"},
        {"architecture": "efficientnet_lite0"},
        {"architecture": "efficientnet_lite0", "pretrained": False, "random_flip": True},
    ],
)
def test_model_takes_uint8_images_and_returns_probabilities_over_the_labels(overrides):
    model = build_model(_params(**overrides))
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, SIZE, SIZE, 3)

    probabilities = model.predict(_random_images(3), verbose=0)
    assert probabilities.shape == (3, len(LABELS))
    assert probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities >= 0).all()


@pytest.mark.parametrize("normalization", ["batch", "none"])
def test_simple_cnn_has_one_block_per_filter_entry(normalization):
    model = build_model(_params(filters=[4, 8, 16], normalization=normalization))
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [layer.filters for layer in convolutions] == [4, 8, 16]
    assert len(norms) == (3 if normalization == "batch" else 0)


def test_backbone_starts_from_a_local_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg"
    )
    weights_file = tmp_path / "mobilenetv3small_notop.weights.h5"
    source.save_weights(weights_file)

    keras.utils.set_random_seed(2)
    backbone = "mobilenetv3small"
    from_file = build_model(_params(architecture=backbone, pretrained_weights=weights_file))
    from_scratch = build_model(_params(architecture=backbone))

    def same_backbone_weights(model: keras.Model) -> bool:
        inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        pairs = zip(inner.get_weights(), source.get_weights(), strict=True)
        return all(np.array_equal(a, b) for a, b in pairs)

    assert same_backbone_weights(from_file)
    assert not same_backbone_weights(from_scratch)


def test_mixed_precision_computes_in_bfloat16_and_leaves_the_global_policy_alone():
    model = build_model(_params(architecture="resnet", mixed_precision=True))
    convolution = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert convolution.compute_dtype == "bfloat16"
    assert convolution.kernel.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    assert build_model(_params()).layers[-1].compute_dtype == "float32"


def test_random_transforms_change_training_batches_only():
    transforms = {"random_flip": True, "random_rotation_degrees": 30, "random_zoom": 0.2}
    model = build_model(_params(dropout=0.0, **transforms))
    plain = build_model(_params(dropout=0.0))
    plain.set_weights(model.get_weights())  # the random layers have no weights
    images = _random_images(4)
    # Inference: the transforms pass images through, so both models agree.
    assert np.allclose(model.predict(images, verbose=0), plain.predict(images, verbose=0))
    # Training: the model sees transformed images.
    trained = keras.ops.convert_to_numpy(model(images, training=True))
    assert not np.allclose(trained, keras.ops.convert_to_numpy(plain(images, training=True)))


def test_per_image_standardization_ignores_a_colour_cast_and_exposure():
    model = build_model(_params(architecture="resnet", per_image_standardization=True))
    standardized = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.LayerNormalization)
    )
    first_stage = keras.Model(model.inputs, standardized.output)
    images = _random_images(2).astype(np.float32)
    # The same scene under a warmer, dimmer light: each channel scaled and shifted.
    cast = images * np.array([0.9, 0.7, 0.5]) + np.array([20, 10, 5])
    seen = first_stage.predict(images.astype(np.uint8), verbose=0)
    seen_cast = first_stage.predict(cast.round().astype(np.uint8), verbose=0)
    assert np.allclose(seen.mean(axis=(1, 2)), 0, atol=1e-3)
    assert np.allclose(seen.std(axis=(1, 2)), 1, atol=1e-2)
    assert np.allclose(seen, seen_cast, atol=0.05)  # up to the rounding to uint8
