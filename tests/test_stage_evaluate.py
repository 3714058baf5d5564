import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from melanoma.evaluation.external import ExternalSetError
from melanoma.evaluation.model_card import DESCRIPTION_LIMIT, with_interval
from melanoma.labels import LABELS
from melanoma.registry.promotion import (
    DECISION_TAG,
    KEPT,
    PROMOTED,
    REASON_TAG,
    SOURCE_RUN_TAG,
    THRESHOLD_TAG,
    champion_version,
)
from stages import evaluate


def _train_outputs(model, run_id: str, model_uri: str, temperature: float = 1.0) -> None:
    """models/ as the train stage leaves it."""
    Path("models").mkdir()
    model.save(evaluate.MODEL_FILE)
    evaluate.RUN_FILE.write_text(
        json.dumps(
            {"run_id": run_id, "model_uri": model_uri, "image_size": 16, "temperature": temperature}
        )
    )


def test_evaluate_reports_every_set_logs_registers_and_defends_the_champion(
    evaluation_project, tiny_classifier, log_model
):
    paths, _ = evaluation_project
    model = tiny_classifier()
    run_id, model_uri = log_model(model)
    _train_outputs(model, run_id, model_uri, temperature=1.5)

    evaluate.main()

    report = json.loads(evaluate.METRICS_FILE.read_text())
    test, external = report["test"], report["external"]["tinyext"]
    assert test["images"] == len(paths) == 2 * len(LABELS)
    assert test["accuracy_ci_low"] <= test["accuracy"] <= test["accuracy_ci_high"]
    assert {"ece", "brier", "ece_uncalibrated", "brier_uncalibrated"} <= set(test)
    predictions = pd.read_csv(evaluate.PREDICTIONS_FILE)
    assert predictions["image_path"].tolist() == paths

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
            assert (evaluate.PLOTS_DIR / f"{name}_{plot}.png").stat().st_size > 0
    assert evaluate.GALLERY_FILE.stat().st_size > 0

    training_run = mlflow.get_run(run_id)
    metrics = training_run.data.metrics
    assert metrics["test_accuracy"] == test["accuracy"]
    assert metrics["tinyext_melanoma_auc"] == external["melanoma_auc"]
    assert metrics["melanoma_threshold"] == operating_point["threshold"]
    # The headline figures only (threshold + 5 per set): the rest is in metrics.json and in
    # one table artifact.
    assert len(metrics) == 11 and "test_melanoma_recall" not in metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")}
    assert {
        "evaluation/metrics.json",
        "evaluation/tinyext_reliability.png",
        "evaluation/melanoma_gallery.png",
        "evaluation/model_card.md",
        evaluate.FIGURES_TABLE_ARTIFACT,
    } <= artifacts
    table = mlflow.artifacts.load_dict(
        f"{training_run.info.artifact_uri}/{evaluate.FIGURES_TABLE_ARTIFACT}"
    )
    rows = {(row[0], row[1]): row[2:] for row in table["data"]}
    assert rows[("test", "melanoma_recall")][2] == test["melanoma_recall_ci_high"]
    assert rows[("tinyext", "ece_uncalibrated")][0] == external["ece_uncalibrated"]
    assert training_run.data.tags["registry.version"] == "1"

    client = MlflowClient()
    assert champion_version(client, "melanoma-test") == "1"
    first = client.get_model_version("melanoma-test", "1")
    assert first.tags[DECISION_TAG] == PROMOTED
    assert first.tags["test_data_sha256"] and first.tags["git_commit"]
    assert first.tags["test_balanced_accuracy"] == str(test["balanced_accuracy"])
    assert first.tags["tinyext_melanoma_auc"] == str(external["melanoma_auc"])
    assert first.tags[THRESHOLD_TAG] == str(operating_point["threshold"])
    # What the version points to is the served model, which carries that threshold itself.
    served = mlflow.models.get_model_info("models:/melanoma-test/1")
    assert (
        served.flavors["python_function"]["config"]["melanoma_threshold"]
        == (operating_point["threshold"])
    )
    # The model card: written from the report, logged, and the version's description (whole,
    # or without its params table when it is longer than the registry's column).
    card = evaluate.MODEL_CARD.read_text()
    assert f"MLflow run `{run_id}`" in card
    assert f"| accuracy | {with_interval(test, 'accuracy')} | " in card
    assert f"P(melanoma) >= {operating_point['threshold']:.4f}" in card
    assert "Unknown: reports/validation.json was not available." in card
    assert len(first.description) <= DESCRIPTION_LIMIT
    assert first.description.split("## Training data")[0] == card.split("## Training data")[0]

    # Train restored from DVC's run cache: run.json names a run this store never saw. The same
    # model comes back as version 2; re-scored on the same images it ties with v1, whose
    # champion alias stays.
    missing_run = {"run_id": "f" * 32, "model_uri": "models:/m-gone", "image_size": 16}
    evaluate.RUN_FILE.write_text(json.dumps(missing_run))

    evaluate.main()

    second = client.get_model_version("melanoma-test", "2")
    assert mlflow.get_run(second.run_id).data.tags[SOURCE_RUN_TAG] == "f" * 32
    assert second.tags[DECISION_TAG] == KEPT
    reason = second.tags[REASON_TAG]
    assert "difference vs champion v1 +0.0000" in reason and "on 36 images" in reason
    assert champion_version(client, "melanoma-test") == "1"


def test_evaluate_stops_on_a_missing_external_folder_before_any_work(evaluation_project):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["evaluate"]["external_sets"][0]["path"] = "nowhere"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ExternalSetError, match=r"external_sets\[0\]\.path \(tinyext\): nowhere"):
        evaluate.main()
    assert not evaluate.METRICS_FILE.exists()
