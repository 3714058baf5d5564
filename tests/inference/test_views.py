"""Test-time views (melanoma.inference.views): the averaged graph, and that evaluate, `melanoma
predict` and the served model all answer with it."""

import base64
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from melanoma.cli import main
from melanoma.evaluation.report import validation_scores
from melanoma.exit_codes import OK
from melanoma.inference.predict import load_model, load_model_and_detector
from melanoma.inference.unfamiliar import POOLED
from melanoma.inference.unfamiliar import probe as identity_probe
from melanoma.inference.views import VIEWS, probe, trained_model, views_of, with_views
from melanoma.labels import LABELS
from melanoma.metrics import predictions_table
from melanoma.registry.serving import IMAGE_COLUMN, log_served_model, serving_config
from tests.helpers import MODEL_SIZE, fitted_detector, noise_images, position_classifier


def _transpose(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 1, 3)


# Each set of views, written out with numpy (images are (n, rows, columns, channels)).
NUMPY_VIEWS = {
    1: [lambda x: x],
    2: [lambda x: x, lambda x: x[:, :, ::-1]],
    4: [
        lambda x: x,
        lambda x: x[:, :, ::-1],  # mirror
        lambda x: x[:, ::-1],  # vertical flip
        lambda x: x[:, ::-1, ::-1],  # half turn
    ],
    8: [
        lambda x: x,
        lambda x: x[:, :, ::-1],
        lambda x: x[:, ::-1],
        lambda x: x[:, ::-1, ::-1],
        lambda x: np.rot90(x, 1, axes=(1, 2)),
        lambda x: np.rot90(x, 3, axes=(1, 2)),
        _transpose,
        lambda x: _transpose(x[:, ::-1, ::-1]),  # the anti-diagonal transpose
    ],
}


@pytest.mark.parametrize("views", [2, 4, 8])
def test_the_model_with_views_is_the_mean_over_the_numpy_views(views):
    base = position_classifier()
    images = noise_images(5, MODEL_SIZE, seed=3)
    expected = np.mean(
        [base.predict_on_batch(np.ascontiguousarray(view(images))) for view in NUMPY_VIEWS[views]],
        axis=0,
    )
    single = base.predict_on_batch(images)
    assert np.abs(expected - single).max() > 1e-3  # the views do change this model's answer

    model = with_views(base, views)
    np.testing.assert_allclose(model.predict_on_batch(images), expected, atol=1e-6)
    assert views_of(model) == views and trained_model(model) is base

    # The same views of a view average to the same: each set is a group.
    turned = np.ascontiguousarray(NUMPY_VIEWS[views][-1](images))
    np.testing.assert_allclose(model.predict_on_batch(turned), expected, atol=1e-6)

    # One pass: the averaged probabilities and the features of the image itself.
    probabilities, features = probe(model, POOLED).predict_on_batch(images)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    _, identity_features = identity_probe(base, POOLED).predict_on_batch(images)
    np.testing.assert_allclose(features, identity_features, atol=1e-6)


def test_one_view_is_the_trained_model_itself_and_views_survive_saving(tmp_path):
    base = position_classifier()
    assert with_views(base, 1) is base and views_of(base) == 1 and trained_model(base) is base
    assert probe(base, POOLED).output[1].shape == identity_probe(base, POOLED).output[1].shape

    model = with_views(base, 8)
    model.save(tmp_path / "views.keras")
    loaded = keras.saving.load_model(tmp_path / "views.keras")
    images = noise_images(3, MODEL_SIZE)
    assert views_of(loaded) == 8
    np.testing.assert_array_equal(loaded.predict_on_batch(images), model.predict_on_batch(images))

    with pytest.raises(ValueError, match="already averages 8 views"):
        with_views(model, 2)
    with pytest.raises(ValueError, match=r"predict\.views=3"):
        with_views(base, 3)


def test_the_views_are_the_ones_train_views_caches():
    from melanoma.model.features import VIEWS as CACHED_VIEWS

    assert VIEWS == CACHED_VIEWS


def test_evaluate_predict_and_the_served_model_answer_the_same_averaged_probabilities(
    mlflow_project, tmp_path, capsys
):
    """views 4 on a tiny model: evaluate's scores (validation_scores, predict_split),
    `melanoma predict` on the trained model file with predict.views 4, and the served model
    logged from the same graph, in process; a served model keeps its views whatever params
    say, a trained model file gets params' views."""
    size = mlflow_project.ingest.image_size
    rng = np.random.default_rng(5)
    files = []
    for index in range(3):  # as ingest writes them: squares at the ingest size
        files.append(tmp_path / f"image{index}.png")
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(files[-1])
    base = position_classifier()
    base.save("model.keras")
    label_indices = np.arange(len(files))

    # evaluate: the model file with predict.views views; validation scored again with them
    model = with_views(keras.saving.load_model("model.keras"), 4)
    table = Path("validation_predictions.csv")
    predictions_table([str(f) for f in files], label_indices, np.full((3, 9), 1 / 9)).to_csv(
        table, index=False
    )
    scored_labels, evaluated = validation_scores(model, table, batch_size=2)
    np.testing.assert_array_equal(scored_labels, label_indices)
    assert np.abs(evaluated - base.predict_on_batch(_model_images(files))).max() > 1e-3

    # melanoma predict, the trained model file, predict.views 4 in params.yaml
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["predict"] = {"views": 4}
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    command = ["predict", *map(str, files), "--model", "model.keras", "--json"]
    assert main([*command, "--threshold", "0.5"]) == OK
    answered = json.loads(capsys.readouterr().out)["predictions"]
    predicted = np.array([[item["probabilities"][label] for label in LABELS] for item in answered])
    np.testing.assert_allclose(predicted, evaluated, atol=1e-6)

    # the served model: the same graph, logged as register logs it
    detector_file = tmp_path / "unfamiliar.npz"
    fitted_detector(base, noise_images(40, MODEL_SIZE)).save(detector_file)
    with mlflow.start_run():
        config = serving_config(mlflow_project, 0.5)
        uri = log_served_model(model, config, files[0], [detector_file]).model_uri
    request = pd.DataFrame(
        {IMAGE_COLUMN: [base64.b64encode(f.read_bytes()).decode("ascii") for f in files]}
    )
    served = mlflow.pyfunc.load_model(uri).predict(request)
    np.testing.assert_allclose(
        [[row[label] for label in LABELS] for row in served["probabilities"]],
        evaluated,
        atol=1e-6,
    )
    # The unfamiliar score looks at the image itself, in the served model and in predict.
    _, detector = load_model_and_detector(uri)
    _, features = identity_probe(base, POOLED).predict_on_batch(_model_images(files))
    np.testing.assert_allclose(served["unfamiliar_score"], detector.scores(features), atol=1e-5)

    # a registered (served) model keeps its own views; a trained model file takes the given ones
    assert views_of(load_model(uri, views=1)) == 4
    assert views_of(load_model(uri, views=8)) == 4
    assert views_of(load_model("model.keras", views=2)) == 2
    assert views_of(load_model("model.keras")) == 1


def _model_images(files: list[Path]) -> np.ndarray:
    from melanoma.inference.predict import read_image, to_model_size

    images = np.stack([read_image(f, 32, 1_000_000) for f in files])
    return to_model_size(images, MODEL_SIZE)
