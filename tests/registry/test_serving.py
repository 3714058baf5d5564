import base64
import json

import mlflow
import numpy as np
import pytest

from melanoma.data.images import ImageRejected
from melanoma.inference.predict import load_model_and_detector, predict_files
from melanoma.inference.unfamiliar import POOLED, UnfamiliarDetector
from melanoma.labels import LABELS
from melanoma.registry.serving import (
    IMAGE_COLUMN,
    RequestRefused,
    ServingConfig,
    answers,
    log_served_model,
    request_body,
    request_images,
)
from tests.helpers import fitted_detector, noise_images

CONFIG = ServingConfig(
    melanoma_threshold=0.3,
    ingest_size=32,
    max_image_pixels=1_000_000,
    max_images_per_request=4,
    max_image_bytes=8_000,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_request_images_take_files_and_pixels_and_name_every_bad_image(image_bytes):
    jpeg = image_bytes(1, (40, 30))
    pixels = np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    images = request_images([_b64(jpeg), pixels.tolist(), jpeg], CONFIG, 16)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[1], pixels)
    np.testing.assert_array_equal(images[0], images[2])  # base64 or the bytes themselves

    bad = [
        _b64(jpeg),
        "not base64 !",
        _b64(b"plain text"),
        _b64(jpeg[:100]),
        _b64(image_bytes(2, (60, 60), "BMP")),  # over max_image_bytes
        (pixels + 300).tolist(),
        [[1, 2], [3]],
        7,
    ]
    config = ServingConfig(**{**vars(CONFIG), "max_images_per_request": 10})
    with pytest.raises(RequestRefused) as refused:
        request_images(bad, config, 16)
    message = json.loads(refused.value.serialize_as_json())["message"]
    assert message.startswith("7 of 8 images refused, none predicted: image 1: a string")
    for phrase in (
        "image 2: not a JPEG",
        "image 3: JPEG data ends early",
        "image 4: 10854 bytes, over the limit of 8000 (serve.max_image_bytes) (too_large)",
        "image 5: pixel values that are not integers from 0 to 255",
        "image 6: pixel rows of unequal lengths",
        "image 7: a int, neither the base64",
    ):
        assert phrase in message
    assert "image 0" not in message

    with pytest.raises(RequestRefused, match="the request holds no image"):
        request_images([], CONFIG, 16)
    with pytest.raises(RequestRefused, match="5 images in one request, over the limit of 4"):
        request_images([jpeg] * 5, CONFIG, 16)
    with pytest.raises(RequestRefused, match=r"shape \(32, 32, 3\), not \(16, 16, 3\)"):
        request_images([np.zeros((32, 32, 3), np.uint8)], CONFIG, 16)


def test_answers_hold_the_alert_at_the_threshold():
    probabilities = np.full((2, len(LABELS)), 0.05)
    probabilities[0, LABELS.index("melanoma")] = 0.6
    probabilities[1, LABELS.index("nevus")] = 0.6
    detector = UnfamiliarDetector(POOLED, np.eye(3, dtype=np.float32), 1, threshold=0.5)
    table = answers(probabilities, 0.3, np.array([0.9, 0.2]), detector)
    assert table["top_label"].tolist() == ["melanoma", "nevus"]
    assert table["unfamiliar"].tolist() == [True, False]
    assert table["unfamiliar_score"].tolist() == [0.9, 0.2]
    assert table["melanoma_alert"].tolist() == [True, False]
    assert table["melanoma_probability"].tolist() == [0.6, 0.05]
    assert table["probabilities"][1]["nevus"] == 0.6 and len(table["probabilities"][1]) == 9


def test_request_body_is_the_files_in_base64_and_names_a_bad_file(tmp_path, image_bytes):
    good, broken = tmp_path / "a.jpg", tmp_path / "b.jpg"
    good.write_bytes(image_bytes(1, (300, 200)))
    broken.write_bytes(image_bytes(2, (60, 40))[:150])
    body = request_body([good], 1_000_000)
    assert base64.b64decode(body["inputs"][0]) == good.read_bytes()
    assert len(json.dumps(body)) <= 1.5 * good.stat().st_size
    with pytest.raises(ImageRejected, match="b.jpg: JPEG data ends early"):
        request_body([good, broken], 1_000_000)


def test_logged_served_model_is_pyfunc_and_keras_and_says_both_input_kinds(
    mlflow_project, tiny_classifier, tmp_path, image_bytes
):
    model = tiny_classifier()
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(3, (50, 40), "PNG"))
    detector_file = tmp_path / "unfamiliar.npz"
    fitted_detector(model, noise_images(40, 16)).save(detector_file)
    with mlflow.start_run():
        uri = log_served_model(model, CONFIG, photo, [detector_file]).model_uri

    info = mlflow.models.get_model_info(uri)
    assert info.flavors["python_function"]["config"]["melanoma_threshold"] == 0.3
    assert info.signature.inputs.input_names() == [IMAGE_COLUMN]
    example = mlflow.models.Model.load(uri).load_input_example(
        mlflow.artifacts.download_artifacts(uri)
    )[IMAGE_COLUMN]
    assert base64.b64decode(example[0]) == photo.read_bytes()
    assert np.asarray(example[1]).shape == (16, 16, 3)

    # The keras flavor reads the same weights: predict, explain and re-scoring load it so.
    keras_model = mlflow.keras.load_model(uri)
    np.testing.assert_array_equal(keras_model.get_weights()[0], model.get_weights()[0])

    # The detector travels with it: `melanoma predict` reads the same one.
    _, detector = load_model_and_detector(uri)
    assert detector.threshold == fitted_detector(model, noise_images(40, 16)).threshold

    served = mlflow.pyfunc.load_model(uri).predict(example.to_frame())
    expected = predict_files(model, [photo], 32, 1_000_000, detector)[0]
    assert served["unfamiliar_score"].tolist() == pytest.approx([expected.unfamiliar_score] * 2)
    assert served["unfamiliar"].tolist() == [expected.unfamiliar] * 2
    for row in range(2):  # the file and its pixels
        np.testing.assert_allclose(
            [served["probabilities"][row][label] for label in LABELS],
            [expected.probabilities[label] for label in LABELS],
            atol=1e-5,
        )
    assert served["melanoma_alert"].tolist() == [expected.melanoma_probability >= 0.3] * 2
