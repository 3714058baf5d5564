"""EfficientNet-Lite0: the port against the reference outputs, and which blocks train."""

from functools import partial
from pathlib import Path

import keras
import numpy as np
import pytest

from melanoma.config import LITE0_BLOCKS
from melanoma.model import efficientnet_lite
from melanoma.model.architectures import build_model, feature_extractor
from tests.helpers import train_params

# CI clones the repository beside a copy of shared/: the same relative path works there.
REFERENCE = (
    Path(__file__).resolve().parents[2] / "../shared/fixtures/efficientnet_lite0_reference.npz"
)


_params = partial(
    train_params, architecture="efficientnet_lite0", filters=[8], dropout=0.2, learning_rate=0.001
)


def test_port_matches_the_reference_features_and_imagenet_logits():
    reference = np.load(REFERENCE)
    assert str(reference["weights_sha256"]) == efficientnet_lite.WEIGHTS_SHA256
    images = reference["images"]
    # The model of the pipeline, uint8 in: its scaling, backbone and weights are what is checked.
    model = build_model(_params(image_size=images.shape[1]))
    assert model.inputs[0].dtype == "uint8"
    features = feature_extractor(model).predict(images, verbose=0)
    kernel, bias = efficientnet_lite.imagenet_classifier(efficientnet_lite.read_weights())
    logits = features @ kernel + bias

    assert features.shape == (4, efficientnet_lite.FEATURES)
    np.testing.assert_allclose(features, reference["features"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(logits, reference["logits"], atol=1e-3, rtol=0)
    assert logits.argmax(axis=1).tolist() == [78, 551, 78, 78]


def test_the_network_has_the_lite0_blocks_and_every_tensor_of_the_file_is_mapped():
    specs = efficientnet_lite.block_specs()
    assert len(specs) == LITE0_BLOCKS == 16
    state = efficientnet_lite.read_weights()
    assert len(state) == 296
    backbone = efficientnet_lite.backbone(32)
    # No squeeze-excitation and no conv biases: the weights are exactly the file's convolutions
    # and batch norms (4 Keras weights for 5 PyTorch tensors), plus the classifier left aside.
    keras_weights = sum(len(layer.weights) for layer in backbone.layers)
    batch_norms = sum(name.endswith(".running_var") for name in state)
    assert keras_weights == len(state) - batch_norms - 2


def _trainable_layers(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers if layer.trainable and layer.weights}


@pytest.mark.parametrize("pretrained", [True, False])
def test_freeze_n_trains_the_top_n_blocks_and_the_head(pretrained):
    backbone = efficientnet_lite.backbone(32)
    efficientnet_lite.set_trainable(backbone, 2, pretrained=pretrained)
    trained = _trainable_layers(backbone)
    assert {efficientnet_lite.block_of(name) for name in trained} == {14, 15, -1}
    # Pretrained batch norms keep their ImageNet statistics; random ones must learn theirs.
    assert any(name.endswith("_bn") for name in trained) is not pretrained

    efficientnet_lite.set_trainable(backbone, "all", pretrained=True)
    assert _trainable_layers(backbone) == set()
    efficientnet_lite.set_trainable(backbone, "none", pretrained=False)
    assert _trainable_layers(backbone) == {layer.name for layer in backbone.layers if layer.weights}


def test_pretrained_false_starts_from_random_weights():
    pretrained = build_model(_params())
    scratch = build_model(_params(pretrained=False))
    name = efficientnet_lite.BACKBONE_NAME
    first = pretrained.get_layer(name).get_layer("stem_conv").get_weights()[0]
    assert np.array_equal(
        first, efficientnet_lite.read_weights()["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    assert not np.array_equal(
        first, scratch.get_layer(name).get_layer("stem_conv").get_weights()[0]
    )


def test_batch_norms_learnt_from_scratch_follow_their_batches_faster():
    momentum = {
        pretrained: {
            layer.momentum
            for layer in build_model(_params(pretrained=pretrained))
            .get_layer(efficientnet_lite.BACKBONE_NAME)
            .layers
            if isinstance(layer, keras.layers.BatchNormalization)
        }
        for pretrained in (True, False)
    }
    assert momentum == {True: {0.99}, False: {0.9}}
