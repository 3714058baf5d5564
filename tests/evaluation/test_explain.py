from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from melanoma.evaluation.explain import (
    ExplainError,
    check_output_dir,
    gallery_cases,
    grad_cam,
    heat_maps,
    overlay_paths,
    upsample,
    write_gallery,
    write_overlays,
)
from melanoma.inference.predict import load_model, predict_files
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.model.architectures import build_model
from melanoma.params.model import TrainParams
from tests.helpers import lite_ensemble, whole_ensemble

NEVUS = LABELS.index("nevus")
SIZE, PATCH = 32, 8
MAX_PIXELS = 1_000_000


def _params(**overrides) -> TrainParams:
    values = {
        "architecture": "simple_cnn",
        "image_size": SIZE,
        "filters": [8, 16],
        "dropout": 0.0,
        "random_flip": False,
        "learning_rate": 0.01,
        "batch_size": 16,
        "epochs": 1,
        "early_stopping_patience": 0,
        "reduce_lr_patience": 0,
    }
    return TrainParams(**{**values, **overrides})


def _patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """n dark noise images; every other one has a white PATCH x PATCH square at a random place
    and is a melanoma, the rest are nevi. Returns (images, labels, (row, column) of each patch
    or None)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, (n, SIZE, SIZE, 3)).astype(np.uint8)
    labels = np.full(n, NEVUS)
    corners = []
    for k in range(n):
        if k % 2:
            corners.append(None)
            continue
        row, column = (int(v) for v in rng.integers(0, SIZE - PATCH + 1, 2))
        images[k, row : row + PATCH, column : column + PATCH] = 255
        labels[k] = MELANOMA_INDEX
        corners.append((row, column))
    return images, labels, corners


def test_heat_map_maximum_lies_on_the_patch_that_decides_the_class():
    # The class is decided by the white patch alone, wherever it is: a model that learned it
    # must show the patch as its melanoma evidence.
    keras.utils.set_random_seed(0)
    model = build_model(_params())
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    images, labels, _ = _patch_images(128, seed=0)
    model.fit(images, labels, epochs=5, batch_size=16, verbose=0)

    test_images, _, corners = _patch_images(16, seed=1000)
    melanomas = [k for k, corner in enumerate(corners) if corner is not None]
    maps, probabilities = heat_maps(
        grad_cam(model), test_images[melanomas], [MELANOMA_INDEX] * len(melanomas)
    )

    assert (probabilities[:, MELANOMA_INDEX] > 0.5).all()  # the model did learn the patch
    for k, heat_map in zip(melanomas, maps, strict=True):
        image_map = upsample(heat_map, SIZE)
        row, column = np.unravel_index(image_map.argmax(), image_map.shape)
        top, left = corners[k]
        assert top <= row < top + PATCH and left <= column < left + PATCH, (corners[k], row, column)
        inside = np.zeros_like(image_map, bool)
        inside[top : top + PATCH, left : left + PATCH] = True
        assert image_map[inside].mean() > 2 * image_map[~inside].mean()


@pytest.mark.parametrize(
    ("overrides", "layer"),
    [
        ({"architecture": "simple_cnn"}, "simple_cnn/max_pooling2d"),
        ({"architecture": "resnet"}, "resnet/re_lu"),
        ({"architecture": "resnet", "mixed_precision": True}, "resnet/re_lu"),
        # keras.applications networks (2-4 s each to build): their own layer names only.
        pytest.param(
            {"architecture": "mobilenetv3small"},
            "mobilenetv3small/MobileNetV3Small/activation",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"architecture": "efficientnetb0"},
            "efficientnetb0/efficientnetb0/top_activation",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_every_architecture_is_split_at_its_last_block_without_changing_its_answer(
    overrides, layer
):
    model = build_model(_params(image_size=64, **overrides))
    explainer = grad_cam(model)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)

    maps, probabilities = heat_maps(explainer, images, [MELANOMA_INDEX, NEVUS, 0])

    assert explainer.layer.startswith(layer)
    (block,) = explainer.features.outputs
    _, height, width, _ = block.shape
    assert maps.shape == (3, height, width) and height > 1  # a map, not one number
    assert maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)


def test_a_block_two_models_deep_is_found():
    # Architectures to come may nest their blocks: a backbone inside a stage inside the model.
    block_input = keras.Input((8, 8, 4))
    activations = keras.layers.ReLU(name="deep_block")(keras.layers.Conv2D(5, 3)(block_input))
    inner = keras.Model(block_input, keras.layers.GlobalAveragePooling2D()(activations), name="in")
    stage_input = keras.Input((16, 16, 3))
    middle = keras.Model(stage_input, inner(keras.layers.Conv2D(4, 3, 2, "same")(stage_input)))
    images = keras.Input((16, 16, 3), dtype="uint8")
    rescaled = keras.layers.Rescaling(1 / 255)(images)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(middle(rescaled))
    model = keras.Model(images, outputs, name="outer")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)

    explainer = grad_cam(model)
    maps, probabilities = heat_maps(explainer, pixels, [MELANOMA_INDEX, NEVUS])

    assert explainer.layer == f"outer/{middle.name}/in/deep_block"
    assert maps.shape == (2, 6, 6)
    np.testing.assert_allclose(probabilities, model.predict(pixels, verbose=0), atol=1e-6)


def _single_and_identical_ensemble(kind: str) -> tuple[keras.Model, keras.Model]:
    """(a model, an ensemble of two members with that model's weights): whole simple_cnn
    models, or Lite0 top blocks (at 64 px, for a 2 x 2 block) on the shared frozen part."""
    if kind == "whole":
        ensemble, members = whole_ensemble(2)
        single = members[0]
    else:
        ensemble, frozen, members = lite_ensemble(2, freeze=1, image_size=64)
        single = keras.Model(frozen.inputs[0], members[0](frozen.outputs[0]))
    members[1].set_weights(members[0].get_weights())
    return single, ensemble


@pytest.mark.parametrize(
    ("kind", "layer", "side"),
    [
        ("whole", "simple_cnn_ensemble/member_0..member_1/max_pooling2d", 8),
        ("lite", "lite_ensemble/member_0..member_1/top_blocks/head_relu6", 2),
    ],
)
def test_an_ensemble_of_identical_members_has_the_single_models_map(kind, layer, side):
    single, ensemble = _single_and_identical_ensemble(kind)
    images = np.random.default_rng(0).integers(0, 256, (4, *single.input_shape[1:]), np.uint8)
    answers = np.asarray(single(images, training=False))  # a call: predict would compile
    # Each image's top class, as the overlays draw it: an untrained tiny model may have no
    # evidence anywhere for another class, and a map of zeros would compare nothing.
    classes = answers.argmax(axis=1)

    explainer = grad_cam(ensemble)
    maps, probabilities = heat_maps(explainer, images, classes)
    expected, _ = heat_maps(grad_cam(single), images, classes)

    assert explainer.layer.startswith(layer)
    assert [block.shape[1:3] for block in explainer.features.outputs] == [(side, side)] * 2
    np.testing.assert_allclose(probabilities, answers, atol=1e-5)
    assert maps.shape == (4, side, side) and (expected.max(axis=(1, 2)) == 1).all()
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def _evidence(model: keras.Model, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM's weighted channel sum (n, h, w) at a single model's block, before the relu
    and the scaling, by hand."""
    explainer = grad_cam(model)
    block = explainer.features(images)
    with tf.GradientTape() as tape:
        tape.watch(block)
        probabilities = explainer.head(block)
        score = tf.reduce_sum(tf.gather(probabilities, classes[:, None], axis=1, batch_dims=1))
    weights = tf.reduce_mean(tape.gradient(score, block), axis=(1, 2), keepdims=True)
    return tf.reduce_sum(weights * block, axis=-1).numpy()


def test_an_ensembles_map_sums_its_members_evidence_for_its_own_answer():
    ensemble, members = whole_ensemble(3)
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), np.uint8)
    classes = np.asarray(ensemble(images, training=False)).argmax(axis=1)

    maps, _ = heat_maps(grad_cam(ensemble), images, classes)

    # The mean's gradient with respect to a member's block is 1/k of the member's own.
    evidence = np.maximum(sum(_evidence(m, images, classes) for m in members) / 3, 0)
    peaks = evidence.max(axis=(1, 2), keepdims=True)
    assert (peaks > 0).all()
    np.testing.assert_allclose(maps, evidence / peaks, atol=1e-5)
    alone, _ = heat_maps(grad_cam(members[0]), images, classes)
    assert np.abs(maps - alone).max() > 0.1  # the other members' evidence did count


def test_a_model_without_a_4d_layer_cannot_be_explained():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(inputs))
    with pytest.raises(ExplainError, match="no layer with a 4-D output"):
        grad_cam(model)


def test_output_folder_is_made_or_refused_with_its_path(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper").is_dir()
    a_file = tmp_path / "taken"
    a_file.write_text("")
    for unwritable in (a_file, a_file / "below"):
        with pytest.raises(ExplainError, match=f"--explain {unwritable}: cannot write there"):
            check_output_dir(unwritable)


def test_overlay_names_never_collide():
    names = overlay_paths(["x/a.jpg", "y/a.jpg", "a.png", "b.jpg", "a_2.jpg"], Path("out"))
    assert [p.name for p in names] == [
        "a_gradcam.png",
        "a_2_gradcam.png",
        "a_3_gradcam.png",
        "b_gradcam.png",
        "a_2_2_gradcam.png",
    ]


def test_overlays_for_readable_images_only(tmp_path, image_bytes):
    model = build_model(_params())
    good, broken, vanished = tmp_path / "good.jpg", tmp_path / "broken.jpg", tmp_path / "gone.png"
    good.write_bytes(image_bytes(1, (60, 40)))
    broken.write_bytes(image_bytes(2, (60, 40))[:200])
    vanished.write_bytes(image_bytes(3, (40, 40), "PNG"))
    predictions = predict_files(model, [good, broken, vanished], SIZE, MAX_PIXELS)
    vanished.unlink()  # between the prediction and its overlay

    written = write_overlays(grad_cam(model), predictions, SIZE, MAX_PIXELS, 0.5, tmp_path / "o")

    assert written == [str(tmp_path / "o" / "good_gradcam.png"), None, None]
    with Image.open(written[0]) as overlay:
        assert overlay.width > 3 * overlay.height  # image, two heat maps and the bars, in a row


def test_gallery_holds_every_melanoma_and_the_top_false_alarms():
    label_indices = np.array([MELANOMA_INDEX, NEVUS, MELANOMA_INDEX, NEVUS, 0, NEVUS])
    p_melanoma = np.array([0.9, 0.8, 0.1, 0.3, 0.6, 0.05])
    probabilities = np.zeros((6, len(LABELS)))
    probabilities[:, MELANOMA_INDEX] = p_melanoma

    cases = gallery_cases(label_indices, probabilities, threshold=0.25, false_alarms=2)

    assert cases == [(0, "found"), (2, "missed"), (1, "false alarm"), (4, "false alarm")]


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_model(_params()),
        lambda: lite_ensemble(2, freeze=1)[0],  # what evaluate draws with train.ensemble: 2
    ],
    ids=["single", "ensemble"],
)
def test_gallery_file_from_test_images(tmp_path, image_bytes, build):
    paths = []
    for n in range(4):
        path = tmp_path / f"ISIC_{n}.png"
        path.write_bytes(image_bytes(n, (SIZE, SIZE), "PNG"))
        paths.append(str(path))
    label_indices = np.array([MELANOMA_INDEX, MELANOMA_INDEX, NEVUS, NEVUS])
    probabilities = np.full((4, len(LABELS)), 0.05)
    probabilities[:, MELANOMA_INDEX] = [0.7, 0.1, 0.6, 0.2]

    output = tmp_path / "reports" / "melanoma_gallery.png"
    cases = write_gallery(build(), paths, label_indices, probabilities, 0.5, output)

    assert [kind for _, kind in cases] == ["found", "missed", "false alarm"]
    assert Image.open(output).size[0] > 0


def test_a_registry_model_is_explained(mlflow_project, log_model):
    _, uri = log_model(build_model(_params(architecture="resnet", image_size=16)))
    mlflow.register_model(uri, "melanoma-test")
    model = load_model("models:/melanoma-test/1")
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)

    maps, probabilities = heat_maps(grad_cam(model), images, [MELANOMA_INDEX] * 2)

    assert maps.shape == (2, 4, 4) and maps.min() >= 0 and maps.max() <= 1  # two stride-2 blocks
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)
