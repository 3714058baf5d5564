"""The site head end to end: `site calibrate` fits and gates it, stores it with the registry
version; `site list`, the model card, `predict --site` and the served model's `params.site` use
it; a damaged or mismatched head is refused naming the site and version.

The registered model answers the same probabilities for every image, so its own melanoma AUC
on any sample is 0.5; its features (those of its unfamiliar-image detector) are the image's
mean colour. A clinic whose melanomas are bluer than its other lesions is then one where a head
ranks better than the model: what the head is for."""

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma.cli import main
from melanoma.exit_codes import CANNOT_RUN, OK
from melanoma.labels import LABELS, MELANOMA
from melanoma.registry.promotion import THRESHOLD_TAG, Decision, record_decision
from melanoma.registry.serving import ServingConfig, log_served_model
from melanoma.registry.sites import (
    HEAD_FILE,
    head_artifact_folder,
    load_site_head,
    site_for_reference,
    store_site,
    version_sites,
)
from melanoma.sites.head import FeatureIdentity
from tests.helpers import MODEL_SIZE, build_tiny_classifier, fitted_detector, noise_images

MODEL = "melanoma-test"
SAME_FOR_EVERY_IMAGE = [1 / len(LABELS)] * len(LABELS)
BLUE_AND_RED = [(120, 120, 240), (120, 120, 20)]


@pytest.fixture
def registry_with_features(mlflow_project, tmp_path) -> None:
    """melanoma-test v1, champion, global threshold 0.45: the same-answer model logged as
    `register` logs it, with an unfamiliar-image detector of its pooled features."""
    model = build_tiny_classifier(SAME_FOR_EVERY_IMAGE)
    images = noise_images(40, MODEL_SIZE)
    detector_file = tmp_path / "unfamiliar.npz"
    fitted_detector(model, images).save(detector_file)
    example = tmp_path / "example.png"
    Image.fromarray(images[0]).save(example)
    with mlflow.start_run():
        config = ServingConfig(0.45, 32, 1_000_000, 8, 200_000)
        uri = log_served_model(model, config, example, [detector_file]).model_uri
    mlflow.register_model(uri, MODEL, tags={THRESHOLD_TAG: "0.45"})
    record_decision(mlflow.MlflowClient(), MODEL, "1", Decision(True, "first"))


def colour_image(rgb: tuple[int, int, int], size: int = 24) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), rgb, np.uint8))


def write_clinic(folder: Path, melanomas: int, others: int, bluer_melanomas: bool) -> Path:
    """<class>/<image> single-colour PNGs: red and green at random; with `bluer_melanomas`,
    blue above 150 for the melanomas and below 100 for the others, else at random."""
    rng = np.random.default_rng(0)
    for label, count, blue in (("melanoma", melanomas, (150, 256)), ("nevus", others, (0, 100))):
        (folder / label).mkdir(parents=True)
        for n in range(count):
            red, green = rng.integers(0, 256, 2)
            blues = rng.integers(*blue) if bluer_melanomas else rng.integers(0, 256)
            colour_image((red, green, blues)).save(folder / label / f"{label}_{n}.png")
    return folder


def _site(name: str = "clinic_blue"):
    return version_sites(mlflow.MlflowClient(), MODEL, "1")[name]


def _version_site():
    return site_for_reference(mlflow.MlflowClient(), f"models:/{MODEL}/1", "clinic_blue")


def _predict_json(capsys, *arguments: str) -> dict:
    assert main(["predict", "blue.png", "red.png", "--json", *arguments]) == OK
    return json.loads(capsys.readouterr().out)


def _served_answers(site: str | None) -> pd.DataFrame:
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    pixels = [np.full((MODEL_SIZE, MODEL_SIZE, 3), rgb, np.uint8) for rgb in BLUE_AND_RED]
    return served.predict(pd.DataFrame({"image": pixels}), params={"site": site or ""})


def _page_answers(params, site: str | None) -> list:
    """The clinic page's answers for the blue and red images at the site's threshold."""
    from melanoma.app.answers import (
        Upload,
        answer_uploads,
        at_threshold,
        load_version,
        threshold_for,
    )

    served = load_version(params)
    uploads = [Upload(name, Path(name).read_bytes()) for name in ("blue.png", "red.png")]
    answers = answer_uploads(served, uploads, params, explain=False)
    return at_threshold(answers, threshold_for(served, site))


def test_the_head_is_adopted_where_it_ranks_better_and_every_site_path_uses_it(
    registry_with_features, mlflow_project, capsys
):
    clinic = write_clinic(Path("clinic"), melanomas=20, others=30, bluer_melanomas=True)
    assert main(["site", "calibrate", "clinic_blue", str(clinic)]) == OK
    output = capsys.readouterr().out
    assert "alert at the site head's P(melanoma) >=" in output
    assert "site head adopted: out-of-fold AUC" in output
    record = _site()
    assert record.head_adopted and record.model_auc == 0.5
    assert record.head_auc > record.model_auc + 0.02
    # On the head's out-of-fold scores, at the stricter confidence of an adopted head (0.95):
    # with 20 melanomas, the lowest one's score (at 0.90 it would be the second lowest).
    assert record.sample_sensitivity == 1.0

    assert main(["site", "list"]) == OK
    row = next(line for line in capsys.readouterr().out.splitlines() if "clinic_blue" in line)
    assert " yes " in row and f"{record.head_auc:.3f}" in row and "0.500" in row
    card = mlflow.MlflowClient().get_model_version(MODEL, "1").description
    assert f"| yes | 0.500 | {record.head_auc:.3f} |" in card

    for rgb, name in zip(BLUE_AND_RED, ("blue.png", "red.png"), strict=True):
        colour_image(rgb).save(name)
    at_site = _predict_json(capsys, "--site", "clinic_blue")
    assert at_site["site_head"] is True and at_site["melanoma_threshold"] == record.threshold
    blue, red = at_site["predictions"]
    assert blue["melanoma_alert"] and not red["melanoma_alert"]
    assert blue["melanoma_probability"] > red["melanoma_probability"]
    assert blue["probabilities"][MELANOMA] == pytest.approx(1 / len(LABELS))  # the model's own
    # Without a site, nothing changes: the model's P(melanoma) and its global threshold.
    globally = _predict_json(capsys)
    assert [p["melanoma_probability"] for p in globally["predictions"]] == pytest.approx(
        [1 / len(LABELS)] * 2
    )

    served = _served_answers("clinic_blue")
    assert served["melanoma_alert"].tolist() == [True, False]
    assert served["melanoma_threshold"].tolist() == [record.threshold] * 2
    assert served["melanoma_probability"].iloc[0] == pytest.approx(blue["melanoma_probability"])
    unchanged = _served_answers(None)
    assert unchanged["melanoma_probability"].tolist() == pytest.approx([1 / len(LABELS)] * 2)

    # The clinic page: the head's P(melanoma) at the site, the model's without one.
    page = [a.prediction for a in _page_answers(mlflow_project, "clinic_blue")]
    assert [p.melanoma_probability for p in page] == pytest.approx(
        [blue["melanoma_probability"], red["melanoma_probability"]], abs=1e-6
    )
    assert [p.melanoma_alert(record.threshold) for p in page] == [True, False]
    page_globally = [a.prediction for a in _page_answers(mlflow_project, None)]
    assert [p.melanoma_probability for p in page_globally] == pytest.approx([1 / len(LABELS)] * 2)


@pytest.mark.parametrize(
    ("melanomas", "others", "bluer", "reason"),
    [
        (20, 30, False, "not better by more than 0.02 (sites.adapt_margin)"),
        (12, 4, True, "4 other lesions in the sample: the 5-fold check of the head"),
    ],
)
def test_where_the_gate_says_no_the_site_keeps_todays_threshold_and_says_why(
    registry_with_features, capsys, melanomas, others, bluer, reason
):
    clinic = write_clinic(Path("clinic"), melanomas, others, bluer)
    assert main(["site", "calibrate", "clinic_blue", str(clinic)]) == OK
    assert reason in capsys.readouterr().out
    record = _site()
    assert not record.head_adopted and reason in record.head_reason
    assert record.head_sha256 is None
    assert record.threshold == pytest.approx(1 / len(LABELS))  # on the model's own scores
    assert load_site_head(mlflow.MlflowClient(), _version_site()) is None


def test_a_damaged_or_mismatched_head_is_refused_naming_the_site_and_version(
    registry_with_features, caplog, tmp_path
):
    clinic = write_clinic(Path("clinic"), melanomas=20, others=30, bluer_melanomas=True)
    assert main(["site", "calibrate", "clinic_blue", str(clinic)]) == OK
    colour_image(BLUE_AND_RED[0]).save("blue.png")
    client = mlflow.MlflowClient()
    site = _version_site()

    damaged = tmp_path / HEAD_FILE
    damaged.write_bytes(b"not the head")
    client.log_artifact(site.run_id, str(damaged), head_artifact_folder("1", "clinic_blue"))
    assert main(["predict", "blue.png", "--site", "clinic_blue"]) == CANNOT_RUN
    message = "site clinic_blue of melanoma-test v1: its head sites/v1/clinic_blue/head.npz is "
    assert message + "not the one calibrated" in caplog.text
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        _served_answers("clinic_blue")

    # A head whose checksum is right but which was fitted on other features: calibrated again
    # (a good head), then stored as if fitted at another depth.
    assert main(["site", "calibrate", "clinic_blue", str(clinic)]) == OK
    head = load_site_head(client, _version_site())
    other = FeatureIdentity("block14_add", head.features.width, "fedcba9876543210")
    store_site(client, MODEL, "1", site.record, replace(head, features=other))
    caplog.clear()
    assert main(["predict", "blue.png", "--site", "clinic_blue"]) == CANNOT_RUN
    assert "site clinic_blue of melanoma-test v1: its head was fitted on other features" in (
        caplog.text
    )
    with pytest.raises(mlflow.exceptions.MlflowException, match="fitted on other features"):
        _served_answers("clinic_blue")
