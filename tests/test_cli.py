import base64
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from melanoma.cli import main
from melanoma.exit_codes import CANNOT_RUN, OK, SOME_FILES_FAILED
from melanoma.registry.promotion import THRESHOLD_TAG, Decision, record_decision
from tests.helpers import MODEL_SIZE, fitted_detector, noise_images, whole_ensemble

ROOT = Path(__file__).resolve().parents[1]
CONSTANT = [0.05, 0.05, 0.05, 0.5, 0.1, 0.1, 0.05, 0.05, 0.05]  # P(melanoma) = 0.5
EXPLAIN = ["--explain", "overlays"]


@pytest.fixture
def photos(mlflow_project, image_bytes) -> tuple[Path, Path]:
    """(a good photo, a file that is not an image) in the project directory."""
    good, bad = Path("photo.jpg"), Path("notes.jpg")
    good.write_bytes(image_bytes(1, (50, 40)))
    bad.write_text("not an image")
    return good, bad


@pytest.fixture
def keras_file(tiny_classifier) -> str:
    tiny_classifier(CONSTANT).save("model.keras")
    return "model.keras"


@pytest.fixture
def champion(tiny_classifier, log_model) -> None:
    """Versions 1 and 2 of melanoma-test registered, each with alert threshold 0.45, version 1
    the champion."""
    _, uri = log_model(tiny_classifier(CONSTANT))
    for _ in range(2):
        mlflow.register_model(uri, "melanoma-test", tags={THRESHOLD_TAG: "0.45"})
    record_decision(mlflow.MlflowClient(), "melanoma-test", "1", Decision(True, "first"))


def test_help_answers_without_loading_the_model_stack():
    result = subprocess.run(
        [sys.executable, "-m", "melanoma.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for command in ("predict", "request", "promote", "rollback", "exit codes"):
        assert command in result.stdout


def test_predict_prints_each_image_and_fails_for_the_bad_one(photos, keras_file, capsys):
    good, bad = photos
    code = main(["predict", str(good), str(bad), "--model", keras_file, "--threshold", "0.4"])
    out = capsys.readouterr().out.splitlines()

    assert code == SOME_FILES_FAILED
    assert out[0].startswith("photo.jpg: melanoma 0.500  MELANOMA ALERT: P(melanoma) 0.500 >= 0.4")
    assert out[1].strip().startswith("melanoma 0.500, nevus 0.100")
    assert out[2].startswith("notes.jpg: ERROR not_an_image:")


def test_predict_json_with_a_model_file_needs_a_threshold(photos, keras_file, capsys, caplog):
    good, bad = photos
    assert main(["predict", str(good), "--model", keras_file, "--json"]) == CANNOT_RUN
    assert "model.keras carries no alert threshold" in caplog.text and "--threshold" in caplog.text

    assert (
        main(["predict", str(good), "--model", keras_file, "--json", "--threshold", "0.42"]) == OK
    )
    output = json.loads(capsys.readouterr().out)
    assert output["melanoma_threshold"] == 0.42
    (prediction,) = output["predictions"]
    assert prediction["top_label"] == "melanoma" and prediction["melanoma_alert"] is True
    assert sum(prediction["probabilities"].values()) == pytest.approx(1)

    code = main(["predict", str(bad), "--model", keras_file, "--json", "--threshold", "0.4"])
    assert code == SOME_FILES_FAILED
    (failure,) = json.loads(capsys.readouterr().out)["predictions"]
    assert failure["reason"] == "not_an_image" and failure["path"] == "notes.jpg"


def test_predict_warns_of_an_unfamiliar_image_beside_the_alert(
    photos, tiny_classifier, capsys, caplog
):
    model = tiny_classifier()  # answers by mean colour
    model.save("model.keras")
    solid = Path("solid.png")
    Image.new("RGB", (40, 40), (200, 20, 20)).save(solid)
    command = [
        "predict",
        str(photos[0]),
        str(solid),
        "--model",
        "model.keras",
        "--threshold",
        "0.01",
    ]

    # No detector beside the model file: the answer says so rather than guessing.
    assert main([*command, "--json"]) == OK
    first = json.loads(capsys.readouterr().out)["predictions"][0]
    assert first["unfamiliar"] is None and first["unfamiliar_score"] is None
    assert "model.keras carries no unfamiliar-image detector" in caplog.text

    # Beside it, as `train` writes models/: the noisy photo is familiar, the solid red is not.
    fitted_detector(model, noise_images(40, 16)).save(Path("unfamiliar.npz"))
    assert main([*command, "--json"]) == OK
    photo, red = json.loads(capsys.readouterr().out)["predictions"]
    assert (photo["unfamiliar"], red["unfamiliar"]) == (False, True)
    assert red["unfamiliar_score"] > photo["unfamiliar_score"]
    assert isinstance(red["melanoma_alert"], bool)  # the alert is still given, beside it

    assert main(command) == OK
    lines = capsys.readouterr().out.splitlines()
    assert "UNFAMILIAR" not in lines[0]
    assert (
        lines[2].startswith("solid.png: ") and "UNFAMILIAR: unlike the training images" in lines[2]
    )


def test_predict_uses_the_threshold_of_the_registered_version(photos, champion, capsys):
    client = mlflow.MlflowClient()
    client.set_model_version_tag("melanoma-test", "1", THRESHOLD_TAG, "0.6")
    client.set_model_version_tag("melanoma-test", "2", THRESHOLD_TAG, "0.3")

    assert main(["predict", str(photos[0]), "--json"]) == OK
    output = json.loads(capsys.readouterr().out)
    assert output["model"] == "models:/melanoma-test@champion"
    # params.yaml has no say: the champion (v1) alerts at its own 0.6, so P = 0.5 raises none.
    assert output["melanoma_threshold"] == 0.6
    assert output["predictions"][0]["melanoma_alert"] is False

    assert main(["predict", str(photos[0]), "--json", "--model", "models:/melanoma-test/2"]) == OK
    output = json.loads(capsys.readouterr().out)
    assert output["melanoma_threshold"] == 0.3 and output["predictions"][0]["melanoma_alert"]


def test_predict_refuses_a_version_without_a_threshold(photos, champion, caplog):
    mlflow.MlflowClient().delete_model_version_tag("melanoma-test", "1", THRESHOLD_TAG)
    assert main(["predict", str(photos[0])]) == CANNOT_RUN
    assert "melanoma-test v1 has no melanoma_threshold tag" in caplog.text


def test_predict_without_a_model_cannot_run(photos, caplog):
    assert main(["predict", str(photos[0])]) == CANNOT_RUN
    assert "models:/melanoma-test@champion cannot be loaded" in caplog.text


def test_bad_arguments_and_params_are_refused(photos, keras_file):
    with pytest.raises(SystemExit) as usage:
        main(["predict", "photo.jpg", "--threshold", "1.5"])
    assert usage.value.code == 2
    Path("params.yaml").write_text("evaluate: {bootstrap_samples: -1}\n")
    assert main(["predict", "photo.jpg", "--model", keras_file]) == CANNOT_RUN


def test_request_writes_the_files_in_base64_without_a_model(photos, capsys):
    assert main(["request", str(photos[0])]) == OK
    body = json.loads(capsys.readouterr().out)
    assert list(body) == ["inputs"]
    assert [base64.b64decode(image) for image in body["inputs"]] == [photos[0].read_bytes()]
    assert main(["request", str(photos[0]), str(photos[1])]) == SOME_FILES_FAILED
    assert capsys.readouterr().out == ""  # no body with a file the server would refuse


def test_promote_and_rollback_by_hand(champion, capsys):
    assert main(["promote", "2"]) == OK
    assert capsys.readouterr().out.strip() == "melanoma-test: champion v1 -> v2"
    assert main(["rollback"]) == OK
    assert capsys.readouterr().out.strip() == "melanoma-test: champion v2 -> v1"
    assert main(["rollback"]) == CANNOT_RUN
    assert main(["promote", "5"]) == CANNOT_RUN


def test_predict_explain_names_each_overlay_and_skips_the_bad_file(photos, keras_file, capsys):
    good, bad = photos
    code = main(
        ["predict", str(good), str(bad), "--model", keras_file, "--json", "--threshold", "0.4"]
        + EXPLAIN
    )
    output = json.loads(capsys.readouterr().out)

    assert code == SOME_FILES_FAILED
    predicted, failed = output["predictions"]
    assert predicted["overlay"] == "overlays/photo_gradcam.png"
    assert Path(predicted["overlay"]).stat().st_size > 0
    assert "overlay" not in failed and failed["reason"] == "not_an_image"
    assert sorted(p.name for p in Path("overlays").iterdir()) == ["photo_gradcam.png"]


def test_predict_explain_prints_the_overlay_of_the_registry_model(photos, champion, capsys):
    assert main(["predict", str(photos[0])] + EXPLAIN) == OK
    assert capsys.readouterr().out.splitlines()[-1] == "  overlay: overlays/photo_gradcam.png"
    assert Path("overlays/photo_gradcam.png").is_file()


def test_predict_explain_draws_an_ensembles_overlay(photos, capsys):
    whole_ensemble(2, image_size=MODEL_SIZE)[0].save("ensemble.keras")
    command = ["predict", str(photos[0]), "--model", "ensemble.keras", "--threshold", "0.4"]

    assert main(command + EXPLAIN) == OK
    assert capsys.readouterr().out.splitlines()[-1] == "  overlay: overlays/photo_gradcam.png"
    assert Path("overlays/photo_gradcam.png").stat().st_size > 0


def test_predict_explain_into_an_unwritable_folder_stops_before_any_work(photos, caplog):
    # A file in the way: unwritable even for root, who may write into a read-only mode folder.
    target = photos[1] / "overlays"
    code = main(["predict", str(photos[0]), "--model", "nowhere.keras", "--explain", str(target)])

    assert code == CANNOT_RUN
    assert f"--explain {target}: cannot write there" in caplog.text
    assert "nowhere.keras" not in caplog.text  # the model was not even looked for


def test_predict_help_shows_explain(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--explain DIR" in capsys.readouterr().out
