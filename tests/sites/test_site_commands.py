"""`melanoma site calibrate` and `site list`, and `predict --site`, against a real MLflow
registry (SQLite) and a tiny labelled sample."""

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from melanoma.cli import main
from melanoma.exit_codes import CANNOT_RUN, OK, SOME_FILES_FAILED
from melanoma.registry.promotion import THRESHOLD_TAG, Decision, record_decision
from melanoma.registry.serving import ServingConfig, log_served_model
from melanoma.registry.sites import version_sites
from tests.helpers import (
    build_tiny_classifier,
    drift_reference,
    fitted_detector,
    noise_images,
    restore_directory,
)

MODEL = "melanoma-test"


@pytest.fixture(scope="module")
def _registry_once(module_mlflow_project, module_log_model, tmp_path_factory) -> tuple[Path, Path]:
    """`registry`'s versions, made once for the module (logging and registering take seconds)
    in the module_mlflow_project directory: (that directory, a copy of it as made)."""
    _, uri = module_log_model(build_tiny_classifier())
    for _ in range(2):
        mlflow.register_model(uri, MODEL, tags={THRESHOLD_TAG: "0.45"})
    record_decision(mlflow.MlflowClient(), MODEL, "1", Decision(True, "first"))
    root = Path.cwd()
    snapshot = tmp_path_factory.mktemp("registry") / "snapshot"
    shutil.copytree(root, snapshot)
    return root, snapshot


@pytest.fixture
def registry(_registry_once, monkeypatch) -> None:
    """Two versions of the tiny mean-colour classifier, global threshold 0.45, v1 champion.

    The module_mlflow_project directory (the cwd) and its store as _registry_once left them,
    whatever an earlier test stored: restored from their copy, at the same path, which the
    store's artifact locations name."""
    root, snapshot = _registry_once
    restore_directory(snapshot, root)
    monkeypatch.chdir(root)


def write_sample(folder: Path, melanomas: int = 12, others: int = 12, seed: int = 0) -> Path:
    """<class>/<image> PNGs of random colours (the tiny model's score is the colour's) and a
    README beside the class folders, as a clinic would hand it over."""
    rng = np.random.default_rng(seed)
    for label, count in (("melanoma", melanomas), ("nevus", others)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            colour = rng.integers(0, 256, 3)
            pixels = np.clip(colour + rng.integers(-20, 20, (24, 24, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / label / f"{label}_{n}.png")
    (folder / "README.txt").write_text("labelled by Dr. X")
    return folder


def _sites(version: str = "1") -> dict:
    return version_sites(mlflow.MlflowClient(), MODEL, version)


def test_calibrate_stores_the_site_with_the_champion_and_predict_alerts_at_it(
    registry, capsys, caplog
):
    sample = write_sample(Path("clinic_a"))
    assert main(["site", "calibrate", "clinic_a", str(sample)]) == OK
    assert capsys.readouterr().out.startswith(f"{MODEL} v1: site clinic_a: alert at P(melanoma)")
    record = _sites("1")["clinic_a"]
    assert (record.images, record.melanomas) == (24, 12)  # the README is not an image of it
    assert record.global_threshold == 0.45
    assert _sites("2") == {}  # stored with the version it was calibrated for only

    assert main(["site", "list"]) == OK
    listing = capsys.readouterr().out
    assert "clinic_a" in listing and "calibrated" in listing

    Image.new("RGB", (30, 30), (120, 40, 40)).save("photo.png")
    assert main(["predict", "photo.png", "--site", "clinic_a", "--json"]) == OK
    output = json.loads(capsys.readouterr().out)
    assert output["site"] == "clinic_a"
    assert output["melanoma_threshold"] == record.threshold
    (prediction,) = output["predictions"]
    assert prediction["melanoma_alert"] == (prediction["melanoma_probability"] >= record.threshold)

    assert main(["predict", "photo.png", "--site", "clinic_b"]) == CANNOT_RUN
    assert "melanoma-test v1 has no site 'clinic_b'; its sites: clinic_a" in caplog.text


def test_calibrating_again_replaces_the_site_and_another_version_has_its_own(registry):
    assert main(["site", "calibrate", "clinic_a", str(write_sample(Path("first")))]) == OK
    first = _sites("1")["clinic_a"]
    second_sample = write_sample(Path("second"), melanomas=15, others=30, seed=1)
    assert main(["site", "calibrate", "clinic_a", str(second_sample)]) == OK
    assert main(["site", "calibrate", "clinic_a", str(second_sample), "--version", "2"]) == OK

    replaced = _sites("1")["clinic_a"]
    assert (replaced.images, replaced.melanomas) == (45, 15) != (first.images, first.melanomas)
    assert list(_sites("1")) == ["clinic_a"] and list(_sites("2")) == ["clinic_a"]

    # The version's card (its description) lists its sites, once, with the latest figures.
    card = mlflow.MlflowClient().get_model_version(MODEL, "1").description
    assert card.count("## Sites") == 1
    assert f"| clinic_a | {replaced.threshold:.4g} | 45 | 15 |" in card


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["Clinic A", "good"], "site name 'Clinic A' is not a plain identifier"),
        (["clinic_a", "good", "--version", "9"], "melanoma-test has no version 9"),
        (["clinic_a", "missing"], "missing: not a folder"),
        (["clinic_a", "few"], "holds 5 melanomas: at least 11 are needed"),
        (["clinic_a", "nevi"], "holds no melanoma"),
        (["clinic_a", "broken"], "1 files of broken cannot be used: nevus/bad.png"),
        (["clinic_a", "flat"], "flat holds no image in a class folder"),
    ],
)
def test_a_bad_sample_or_name_is_refused_naming_it_and_nothing_is_stored(
    registry, caplog, arguments, message
):
    write_sample(Path("good"))
    write_sample(Path("few"), melanomas=5)
    write_sample(Path("nevi"), melanomas=0)
    write_sample(Path("broken"))
    Path("broken/nevus/bad.png").write_bytes(b"not a png")
    Path("flat").mkdir()
    Image.new("RGB", (30, 30)).save("flat/lesion.png")

    assert main(["site", "calibrate", *arguments]) == CANNOT_RUN
    assert message in caplog.text and "nothing stored" in caplog.text
    assert _sites("1") == {} and _sites("2") == {}


@pytest.fixture
def served_registry(mlflow_project, tiny_classifier, tmp_path) -> None:
    """melanoma-test v1, champion: the tiny classifier logged as `register` logs it, with an
    unfamiliar-image detector and a drift reference made of noise images (its "validation")."""
    model = tiny_classifier()
    images = noise_images(80, 16)
    stored = [tmp_path / "unfamiliar.npz", tmp_path / "drift_reference.npz"]
    fitted_detector(model, images, flagged=0.02).save(stored[0])
    drift_reference(model, images).save(stored[1])
    example = tmp_path / "example.png"
    Image.fromarray(images[0]).save(example)
    config = ServingConfig(0.45, 32, 1_000_000, 8, 200_000)
    with mlflow.start_run():
        uri = log_served_model(model, config, example, stored).model_uri
    mlflow.register_model(uri, MODEL, tags={THRESHOLD_TAG: "0.45"})
    record_decision(mlflow.MlflowClient(), MODEL, "1", Decision(True, "first"))


def _batch(folder: Path, low: int, high: int, seed: int) -> Path:
    """30 noise PNGs whose pixels lie in [low, high): a brighter range is another camera."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for n in range(30):
        pixels = rng.integers(low, high, (16, 16, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image{n}.png")
    return folder


def test_site_check_tells_a_batch_like_validation_from_a_shifted_one(served_registry, capsys):
    like = _batch(Path("like"), 0, 256, seed=5)
    assert main(["site", "check", str(like)]) == OK
    line = capsys.readouterr().out
    assert line.startswith("like: ") and "images look like the validation split of" in line

    brighter = _batch(Path("brighter"), 60, 256, seed=6)
    (brighter / "notes.png").write_text("not an image")
    assert main(["site", "check", str(brighter), "--json"]) == SOME_FILES_FAILED
    result = json.loads(capsys.readouterr().out)
    assert result["drifted"] is True and result["score_p_value"] < 0.005
    assert (result["files"], result["unreadable"]) == (31, 1)
    assert result["images"] == 30 - result["unfamiliar"]


def test_site_check_of_a_version_without_a_drift_reference_says_so(registry, caplog):
    _batch(Path("batch"), 0, 256, seed=7)
    assert main(["site", "check", "batch"]) == CANNOT_RUN
    assert "melanoma-test v1 carries no drift reference" in caplog.text
