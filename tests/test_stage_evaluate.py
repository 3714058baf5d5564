import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from melanoma.labels import LABELS
from melanoma.registry import (
    DECISION_TAG,
    KEPT,
    PROMOTED,
    REASON_TAG,
    SOURCE_RUN_TAG,
    champion_version,
)
from stages import evaluate


def _train_outputs(model, run_id: str, model_uri: str) -> None:
    """models/ as the train stage leaves it."""
    Path("models").mkdir()
    model.save(evaluate.MODEL_FILE)
    evaluate.RUN_FILE.write_text(
        json.dumps({"run_id": run_id, "model_uri": model_uri, "image_size": 16})
    )


def test_evaluate_reports_logs_registers_and_defends_the_champion(
    evaluation_project, tiny_classifier, log_model
):
    paths, _ = evaluation_project
    model = tiny_classifier()
    run_id, model_uri = log_model(model)
    _train_outputs(model, run_id, model_uri)

    evaluate.main()

    report = json.loads(evaluate.METRICS_FILE.read_text())
    assert report["test_images"] == len(paths) == 2 * len(LABELS)
    assert report["accuracy_ci_low"] <= report["accuracy"] <= report["accuracy_ci_high"]
    predictions = pd.read_csv(evaluate.PREDICTIONS_FILE)
    assert predictions["image_path"].tolist() == paths
    assert evaluate.CONFUSION_FILE.stat().st_size > 0 and evaluate.ROC_FILE.stat().st_size > 0
    assert evaluate.GALLERY_FILE.stat().st_size > 0

    training_run = mlflow.get_run(run_id)
    assert training_run.data.metrics["test_accuracy"] == report["accuracy"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")}
    assert "evaluation/metrics.json" in artifacts and "evaluation/roc_curve.png" in artifacts
    assert "evaluation/melanoma_gallery.png" in artifacts
    assert training_run.data.tags["registry.version"] == "1"

    client = MlflowClient()
    assert champion_version(client, "melanoma-test") == "1"
    first = client.get_model_version("melanoma-test", "1")
    assert first.tags[DECISION_TAG] == PROMOTED
    assert first.tags["test_data_sha256"] and first.tags["git_commit"]
    assert first.tags["test_balanced_accuracy"] == str(report["balanced_accuracy"])

    # Train restored from DVC's run cache: run.json names a run this store never saw. The same
    # model comes back as version 2; re-scored on the same images, v1 ties, so it stays champion.
    missing_run = {"run_id": "f" * 32, "model_uri": "models:/m-gone", "image_size": 16}
    evaluate.RUN_FILE.write_text(json.dumps(missing_run))

    evaluate.main()

    second = client.get_model_version("melanoma-test", "2")
    assert mlflow.get_run(second.run_id).data.tags[SOURCE_RUN_TAG] == "f" * 32
    assert second.tags[DECISION_TAG] == KEPT
    assert "vs champion v1" in second.tags[REASON_TAG] and "gain +0.0000" in second.tags[REASON_TAG]
    assert champion_version(client, "melanoma-test") == "1"
