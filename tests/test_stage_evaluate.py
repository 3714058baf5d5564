import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from melanoma import paths
from melanoma.evaluation.card_format import with_interval
from melanoma.labels import LABELS
from melanoma.reports import SetSection
from stages import evaluate
from tests.helpers import write_train_outputs


def test_evaluate_reports_every_set_and_writes_the_card(
    evaluation_project, tiny_classifier, log_model
):
    test_images, _ = evaluation_project
    model = tiny_classifier()
    run_id, model_uri = log_model(model)
    write_train_outputs(model, run_id, model_uri, temperature=1.5)

    evaluate.main()

    report = json.loads(paths.METRICS_FILE.read_text())
    test, external = report["test"], report["external"]["tinyext"]
    assert test["images"] == len(test_images) == 2 * len(LABELS)
    assert test["accuracy_ci_low"] <= test["accuracy"] <= test["accuracy_ci_high"]
    assert {"ece", "brier", "ece_uncalibrated", "brier_uncalibrated"} <= set(test)
    predictions = pd.read_csv(paths.PREDICTIONS_FILE)
    assert predictions["image_path"].tolist() == test_images

    # The external set: 18 images, half chose the threshold, the other half reports.
    operating_point = report["operating_point"]
    assert operating_point["chosen_on"] == "the choosing half of tinyext (9 images)"
    assert operating_point["melanomas"] == 3 and not operating_point["target_reachable"]
    assert external["images"] == 9 and external["melanomas"] == 3
    external_predictions = pd.read_csv("reports/external/tinyext/predictions.csv")
    assert external_predictions["role"].value_counts().to_dict() == {"choose": 9, "report": 9}
    chooser = external_predictions[external_predictions["role"] == "choose"]
    assert chooser.loc[chooser["label"] == "melanoma", "p_melanoma"].min() == pytest.approx(
        operating_point["threshold"], abs=1e-6
    )
    files = pd.read_csv("reports/external/tinyext/files.csv")
    assert len(files) == 19 and files.loc[
        files["status"] == "rejected", "source_path"
    ].tolist() == ["labels.csv"]
    for name in ("test", "tinyext"):
        for plot in ("confusion_matrix", "roc_curve", "reliability"):
            assert (paths.PLOTS_DIR / f"{name}_{plot}.png").stat().st_size > 0
    assert paths.GALLERY_FILE.stat().st_size > 0

    # The model card: written from the report and the run that train named.
    card = paths.MODEL_CARD.read_text()
    assert f"MLflow run `{run_id}`" in card
    assert f"| accuracy | {with_interval(SetSection.model_validate(test), 'accuracy')} | " in card
    assert f"P(melanoma) >= {operating_point['threshold']:.4f}" in card
    assert "Unknown: reports/validation.json was not available." in card


def test_evaluate_stops_on_a_missing_external_folder_before_any_work(evaluation_project, caplog):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["evaluate"]["external_sets"][0]["path"] = "nowhere"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match="1"):
        evaluate.main()
    assert re.search(r"external_sets\[0\]\.path \(tinyext\): nowhere", caplog.text)
    assert not paths.METRICS_FILE.exists()
