"""The registered model served by MLflow's own scoring server, as docs/registry-and-serving.md
shows it: image files in (base64, the body `melanoma request` writes) or pixels, answers with
the alert out, and every bad request refused with a message, without harming the next one."""

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from bench.project import command_env
from bench.serving import model_server, post
from melanoma.inference.predict import predict_files, read_image, to_model_size
from melanoma.labels import LABELS, MELANOMA
from melanoma.registry.promotion import Decision, record_decision
from melanoma.registry.serving import ServingConfig, log_served_model, request_body
from melanoma.registry.sites import store_site
from tests.helpers import (
    build_tiny_classifier,
    fitted_detector,
    image_file_bytes,
    noise_images,
    site_record,
)

INGEST_SIZE, MAX_PIXELS = 32, 1_000_000
CONFIG = dict(
    ingest_size=INGEST_SIZE,
    max_image_pixels=MAX_PIXELS,
    max_images_per_request=8,
    max_image_bytes=200_000,
)

# End to end (a real server): `make test-fast` leaves it out; `make test` and CI run it.
pytestmark = pytest.mark.slow


def _files(folder: Path, image_bytes) -> list[Path]:
    folder.mkdir()
    paths = []
    for seed, (size, fmt) in enumerate([((40, 30), "JPEG"), ((24, 36), "PNG"), ((33, 33), "BMP")]):
        path = folder / f"photo{seed}.{fmt.lower()}"
        path.write_bytes(image_bytes(seed, size, fmt))
        paths.append(path)
    return paths


def _snapshot(*folders: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_size) for folder in folders for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def served(module_mlflow_project, tmp_path_factory):
    """(server URL, the Keras model, image files, the registered threshold, the server's
    working and temporary folders): models:/melanoma-test@champion logged by log_served_model
    with an alert threshold between the files' P(melanoma), served on loopback. One server for
    the module (its start costs seconds): a test must leave the registry's alert as it found it."""
    tmp_path = tmp_path_factory.mktemp("served")
    model = build_tiny_classifier()
    paths = _files(tmp_path / "photos", image_file_bytes)
    melanoma = [
        p.probabilities[MELANOMA] for p in predict_files(model, paths, INGEST_SIZE, MAX_PIXELS)
    ]
    threshold = float(np.mean(sorted(melanoma)[:2]))  # one file under it, two at or above
    detector_file = tmp_path / "unfamiliar.npz"
    fitted_detector(model, noise_images(40, 16)).save(detector_file)
    with mlflow.start_run():
        config = ServingConfig(melanoma_threshold=threshold, **CONFIG)
        uri = log_served_model(model, config, paths[0], [detector_file]).model_uri
    mlflow.register_model(uri, "melanoma-test")
    record_decision(mlflow.MlflowClient(), "melanoma-test", "1", Decision(True, "first"))

    workdir, scratch = tmp_path / "server", tmp_path / "server-tmp"
    workdir.mkdir()
    scratch.mkdir()
    env = command_env(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), TMPDIR=str(scratch))
    log_file = tmp_path / "serve.log"
    with model_server("models:/melanoma-test@champion", log_file, env, workdir) as (url, _):
        yield url, model, paths, threshold, (workdir, scratch)


def test_files_and_pixels_get_the_predict_probabilities_and_the_alert(served):
    url, model, paths, threshold, _ = served
    expected = predict_files(model, paths, INGEST_SIZE, MAX_PIXELS)

    status, answer = post(url, json.dumps(request_body(paths, MAX_PIXELS)).encode())
    assert status == 200, answer
    answers = answer["predictions"]
    assert len(answers) == len(paths)
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(
            [got["probabilities"][label] for label in LABELS],
            [want.probabilities[label] for label in LABELS],
            atol=1e-5,
        )
        assert got["top_label"] == want.top_label
        assert got["melanoma_probability"] == pytest.approx(want.melanoma_probability, abs=1e-5)
        assert got["melanoma_threshold"] == threshold
        assert got["melanoma_alert"] == (want.melanoma_probability >= threshold)
    assert sorted(a["melanoma_alert"] for a in answers) == [False, True, True]

    # The same images as model-sized pixels, in the body the server always took.
    pixels = to_model_size(np.stack([read_image(p, INGEST_SIZE, MAX_PIXELS) for p in paths]), 16)
    status, answer = post(url, json.dumps({"inputs": pixels.tolist()}).encode())
    assert status == 200, answer
    np.testing.assert_allclose(
        [[a["probabilities"][label] for label in LABELS] for a in answer["predictions"]],
        [[a["probabilities"][label] for label in LABELS] for a in answers],
        atol=1e-5,
    )

    # A column of base64 in a dataframe format.
    encoded = base64.b64encode(paths[1].read_bytes()).decode()
    frame = {"dataframe_split": {"columns": ["image"], "data": [[encoded]]}}
    status, answer = post(url, json.dumps(frame).encode())
    assert status == 200, answer
    assert answer["predictions"][0]["probabilities"] == answers[1]["probabilities"]


def test_an_image_unlike_the_training_images_is_answered_with_the_warning(served):
    url, _, paths, _, _ = served
    noise = request_body(paths[:1], MAX_PIXELS)["inputs"][0]
    status, answer = post(url, json.dumps({"inputs": [noise, _png(40, 40)]}).encode())
    assert status == 200, answer
    like_training, solid_colour = answer["predictions"]
    assert like_training["unfamiliar"] is False
    assert solid_colour["unfamiliar"] is True
    assert solid_colour["unfamiliar_score"] > like_training["unfamiliar_score"]
    assert "melanoma_alert" in solid_colour  # the alert is still given beside the warning


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 20, 40)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_bad_requests_get_a_400_naming_the_problem_and_the_next_one_is_answered(served):
    url, _, paths, _, server_folders = served
    good = request_body(paths[:1], MAX_PIXELS)["inputs"][0]
    assert post(url, json.dumps({"inputs": [good]}).encode())[0] == 200
    files_before = _snapshot(*server_folders)
    jpeg = paths[0].read_bytes()

    def inputs(*images) -> bytes:
        return json.dumps({"inputs": list(images)}).encode()

    refused = {
        "not an image": (
            inputs(base64.b64encode(b"hello, not an image").decode()),
            ["image 0: not a JPEG, PNG", "(not_an_image)"],
        ),
        "truncated JPEG": (
            inputs(base64.b64encode(jpeg[:200]).decode()),
            ["image 0: JPEG data ends early", "(truncated)"],
        ),
        "over the decompression limit": (
            inputs(_png(1001, 1000)),
            ["image 0:", "exceeds limit", "(decompression_bomb)"],
        ),
        "empty list": (inputs(), ["the request holds no image"]),
        "a bad image in a batch": (
            inputs(good, "not base64 !", good),
            ["1 of 3 images refused", "image 1: a string that is not base64"],
        ),
        "too many images": (
            inputs(*[good] * 9),
            ["9 images in one request", "limit of 8 (serve.max_images_per_request)"],
        ),
        "a 50 MB body": (
            inputs("A" * 50_000_000),
            ["image 0: 37500000 bytes", "limit of 200000 (serve.max_image_bytes)"],
        ),
    }
    for problem, (body, phrases) in refused.items():
        status, answer = post(url, body)
        assert status == 400, problem
        for phrase in phrases:
            assert phrase in answer["message"], (problem, answer["message"][:500])
        # The problem, not the request echoed back.
        assert len(answer["message"]) < 1000, problem

    status, answer = post(url, inputs(good), content_type="text/plain")
    assert status == 415 and "content types" in answer["message"]

    status, answer = post(url, inputs(good))
    assert status == 200 and len(answer["predictions"]) == 1
    assert _snapshot(*server_folders) == files_before


def test_a_site_field_raises_the_alert_at_that_sites_threshold(served):
    url, model, paths, threshold, _ = served
    melanoma = [
        p.probabilities[MELANOMA] for p in predict_files(model, paths, INGEST_SIZE, MAX_PIXELS)
    ]
    body = request_body(paths, MAX_PIXELS)

    # Calibrated while the server runs: the next request sees it.
    site_threshold = max(melanoma) + 1e-6  # above every file: no alert at this site
    store_site(mlflow.MlflowClient(), "melanoma-test", "1", site_record("clinic_a", site_threshold))
    status, answer = post(url, json.dumps(body | {"params": {"site": "clinic_a"}}).encode())
    assert status == 200, answer
    for got in answer["predictions"]:
        assert got["site"] == "clinic_a"
        assert got["melanoma_threshold"] == pytest.approx(site_threshold)
        assert got["melanoma_alert"] is False

    status, answer = post(url, json.dumps(body).encode())  # no site: the global threshold
    assert status == 200 and answer["predictions"][0]["melanoma_threshold"] == threshold

    status, answer = post(url, json.dumps(body | {"params": {"site": "clinic_b"}}).encode())
    assert status == 400
    assert "melanoma-test v1 has no site 'clinic_b'; its sites: clinic_a" in answer["message"]
