from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from melanoma.data.dataset import load_image
from melanoma.data.images import TRUNCATED, ImageRejected
from melanoma.inference import predict
from melanoma.inference.predict import (
    UNREADABLE,
    ModelLoadError,
    find_images,
    load_model,
    predict_files,
    predict_split,
    read_image,
    to_model_size,
)
from melanoma.labels import LABELS, MELANOMA

INGEST_SIZE, MAX_PIXELS = 32, 1_000_000
CONSTANT = [0.05, 0.05, 0.05, 0.5, 0.1, 0.1, 0.05, 0.05, 0.05]  # P(melanoma) = 0.5


@pytest.fixture
def photos(tmp_path, image_bytes):
    """A folder of user photos: two good ones (not square, not at the ingest size), one
    truncated JPEG, and a text file that a folder scan must skip."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(image_bytes(1, (60, 40)))
    (folder / "more" / "b.PNG").write_bytes(image_bytes(2, (20, 24), "PNG"))
    (folder / "broken.jpg").write_bytes(image_bytes(3, (60, 40))[:200])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(image_bytes(4))
    return folder


def test_folders_expand_to_their_images_and_missing_files_stay(photos):
    found = find_images([photos / "notes.txt", photos, photos / "gone.jpg"])
    assert [p.relative_to(photos).as_posix() for p in found] == [
        "notes.txt",  # named explicitly: tried, whatever its name
        "a.jpg",
        "broken.jpg",
        "more/b.PNG",
        "gone.jpg",
    ]


def test_read_image_prepares_a_photo_like_ingest(photos):
    image = read_image(photos / "a.jpg", INGEST_SIZE, MAX_PIXELS)
    assert image.shape == (INGEST_SIZE, INGEST_SIZE, 3) and image.dtype == np.uint8


def test_read_image_names_the_problem(photos):
    with pytest.raises(ImageRejected) as truncated:
        read_image(photos / "broken.jpg", INGEST_SIZE, MAX_PIXELS)
    assert truncated.value.reason == TRUNCATED
    with pytest.raises(ImageRejected) as missing:
        read_image(photos / "gone.jpg", INGEST_SIZE, MAX_PIXELS)
    assert missing.value.reason == UNREADABLE and "No such file" in str(missing.value)


def test_resize_to_model_matches_the_training_input_pipeline(tmp_path, image_bytes):
    path = tmp_path / "ingested.png"
    path.write_bytes(image_bytes(5, (INGEST_SIZE, INGEST_SIZE), "PNG"))
    ours = to_model_size(read_image(path, INGEST_SIZE, MAX_PIXELS)[None], 16)[0]
    training = load_image(tf.constant(str(path)), 16).numpy()
    np.testing.assert_array_equal(ours, training)


def test_predict_files_keeps_order_reports_bad_files_and_batches(
    photos, tiny_classifier, monkeypatch
):
    monkeypatch.setattr(predict, "BATCH_SIZE", 2)  # three batches for five files
    files = find_images([photos, photos / "gone.jpg", photos / "a.jpg"])
    results = predict_files(tiny_classifier(CONSTANT), files, INGEST_SIZE, MAX_PIXELS)

    assert [r.path for r in results] == [str(f) for f in files]
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert results[1].reason == TRUNCATED and results[3].reason == UNREADABLE
    good = results[0]
    assert list(good.probabilities) == list(LABELS)
    assert list(good.probabilities.values()) == pytest.approx(CONSTANT, abs=1e-6)
    assert good.top_label == MELANOMA
    assert good.melanoma_alert(0.5) and not good.melanoma_alert(0.51)


def test_files_and_manifest_images_get_the_same_probabilities(evaluation_project, tiny_classifier):
    paths, label_indices = evaluation_project
    model = tiny_classifier()
    from_files = predict_files(model, [Path(p) for p in paths], INGEST_SIZE, MAX_PIXELS)
    from_split = predict_split(model, paths, label_indices, batch_size=4)

    assert from_split.shape == (len(paths), len(LABELS))
    np.testing.assert_allclose(
        [list(r.probabilities.values()) for r in from_files], from_split, atol=1e-6
    )


def test_load_model_from_file_registry_or_run(mlflow_project, tiny_classifier, log_model, tmp_path):
    model = tiny_classifier(CONSTANT)
    model.save(tmp_path / "model.keras")
    run_id, uri = log_model(model)
    mlflow.register_model(uri, "melanoma-test")
    mlflow.MlflowClient().set_registered_model_alias("melanoma-test", "champion", "1")

    for reference in (
        str(tmp_path / "model.keras"),
        "models:/melanoma-test@champion",
        f"runs:/{run_id}/model",
    ):
        loaded = load_model(reference)
        assert loaded.input_shape == (None, 16, 16, 3)


def test_load_model_errors_name_the_reference(mlflow_project, tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere.keras: no such file"):
        load_model(str(tmp_path / "nowhere.keras"))
    (tmp_path / "junk.keras").write_text("junk")
    with pytest.raises(ModelLoadError, match="junk.keras cannot be loaded"):
        load_model(str(tmp_path / "junk.keras"))
    with pytest.raises(ModelLoadError, match="models:/melanoma-test@champion cannot be loaded"):
        load_model("models:/melanoma-test@champion")
