import json
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from melanoma import paths
from melanoma.evaluation.model_card import DESCRIPTION_LIMIT
from melanoma.registry.promotion import (
    DECISION_TAG,
    KEPT,
    PROMOTED,
    REASON_TAG,
    SOURCE_RUN_TAG,
    THRESHOLD_TAG,
    champion_version,
)
from melanoma.registry.registration import METRICS_TABLE_ARTIFACT
from stages import evaluate, register
from tests.helpers import (
    build_tiny_classifier,
    restore_directory,
    train_run_info,
    write_train_outputs,
)

NAME = "melanoma-test"  # registry.model_name of the mlflow_project params


@pytest.fixture(scope="module")
def _evaluated_once(
    module_evaluation_project, module_log_model, tmp_path_factory
) -> tuple[Path, Path, str, str]:
    """`evaluated`'s outputs, made once for the module (evaluate takes seconds) in the
    module_mlflow_project directory: (that directory, a copy of it as made, run id, model URI)."""
    model = build_tiny_classifier()
    run_id, model_uri = module_log_model(model)
    write_train_outputs(model, run_id, model_uri, temperature=1.5)
    evaluate.main()
    root = Path.cwd()
    snapshot = tmp_path_factory.mktemp("evaluated") / "snapshot"
    shutil.copytree(root, snapshot)
    return root, snapshot, run_id, model_uri


@pytest.fixture
def evaluated(_evaluated_once, monkeypatch) -> tuple[str, str]:
    """evaluate's outputs for a tiny model logged in its training run: (run id, model URI).

    The module_evaluation_project directory (the cwd) and its store as evaluate left them,
    whatever an earlier test registered: restored from their copy, at the same path, which
    the store's artifact locations name."""
    root, snapshot, run_id, model_uri = _evaluated_once
    restore_directory(snapshot, root)
    monkeypatch.chdir(root)
    return run_id, model_uri


def _versions(client: MlflowClient) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{NAME}'"))


def test_register_logs_the_evaluation_registers_and_promotes_the_first_model(evaluated):
    run_id, _ = evaluated
    report = json.loads(paths.METRICS_FILE.read_text())
    test, external = report["test"], report["external"]["tinyext"]

    register.main()

    training_run = mlflow.get_run(run_id)
    metrics = training_run.data.metrics
    assert metrics["test_accuracy"] == test["accuracy"]
    assert metrics["tinyext_melanoma_auc"] == external["melanoma_auc"]
    assert metrics["melanoma_threshold"] == report["operating_point"]["threshold"]
    # The headline figures only (threshold + 5 per set): the rest is in metrics.json and in
    # one table artifact.
    assert len(metrics) == 11 and "test_melanoma_recall" not in metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")}
    assert {
        "evaluation/metrics.json",
        "evaluation/tinyext_reliability.png",
        "evaluation/melanoma_gallery.png",
        "evaluation/model_card.md",
        METRICS_TABLE_ARTIFACT,
    } <= artifacts
    table = mlflow.artifacts.load_dict(f"{training_run.info.artifact_uri}/{METRICS_TABLE_ARTIFACT}")
    rows = {(row[0], row[1]): row[2:] for row in table["data"]}
    assert rows[("test", "melanoma_recall")][2] == test["melanoma_recall_ci_high"]
    assert rows[("tinyext", "ece_uncalibrated")][0] == external["ece_uncalibrated"]
    assert training_run.data.tags["registry.version"] == "1"

    client = MlflowClient()
    assert champion_version(client, NAME) == "1"
    first = client.get_model_version(NAME, "1")
    assert first.tags[DECISION_TAG] == PROMOTED
    assert first.tags["test_data_sha256"] and first.tags["git_commit"]
    assert first.tags["test_balanced_accuracy"] == str(test["balanced_accuracy"])
    assert first.tags["tinyext_melanoma_auc"] == str(external["melanoma_auc"])
    assert first.tags[THRESHOLD_TAG] == str(report["operating_point"]["threshold"])
    # The model card is the version's description (whole, or without its params table when it
    # is longer than the registry's column).
    card = paths.MODEL_CARD.read_text()
    assert len(first.description) <= DESCRIPTION_LIMIT
    assert first.description.split("## Training data")[0] == card.split("## Training data")[0]
    # What the version points to is the served model, which carries that threshold itself.
    served = mlflow.models.get_model_info(f"models:/{NAME}/1")
    threshold = served.flavors["python_function"]["config"]["melanoma_threshold"]
    assert threshold == report["operating_point"]["threshold"]
    assert json.loads(paths.REGISTRATION_FILE.read_text()) == {
        "model_name": NAME,
        "version": "1",
        "decision": PROMOTED,
        "reason": first.tags[REASON_TAG],
        "run_id": run_id,
        "model_uri": first.source,
    }


def test_registering_again_keeps_one_version_per_model(evaluated):
    client = MlflowClient()
    register.main()
    first = json.loads(paths.REGISTRATION_FILE.read_text())

    register.main()

    assert _versions(client) == ["1"]
    assert json.loads(paths.REGISTRATION_FILE.read_text()) == first
    assert champion_version(client, NAME) == "1"
    assert client.get_model_version(NAME, "1").tags[DECISION_TAG] == PROMOTED


def test_a_version_left_without_a_decision_is_found_and_decided(evaluated):
    client = MlflowClient()
    register.main()
    # What a registration stopped between registering and deciding leaves behind: the version
    # (its served model and tags), no decision, no alias.
    client.delete_model_version_tag(NAME, "1", DECISION_TAG)
    client.delete_registered_model_alias(NAME, "champion")
    client.update_model_version(NAME, "1", description="interrupted")

    register.main()

    assert _versions(client) == ["1"]
    version = client.get_model_version(NAME, "1")
    assert version.tags[DECISION_TAG] == PROMOTED and version.description != "interrupted"
    assert champion_version(client, NAME) == "1"


def test_a_training_run_missing_from_the_store_is_logged_once(evaluated):
    client = MlflowClient()
    register.main()
    # Train restored from DVC's run cache: run.json names a run this store never saw. The same
    # model comes back as version 2; re-scored on the same images it ties with v1, whose
    # champion alias stays.
    train_run_info("f" * 32, "models:/m-gone").write(paths.RUN_FILE)

    register.main()
    register.main()

    assert _versions(client) == ["1", "2"]
    second = client.get_model_version(NAME, "2")
    assert mlflow.get_run(second.run_id).data.tags[SOURCE_RUN_TAG] == "f" * 32
    assert second.tags[DECISION_TAG] == KEPT
    reason = second.tags[REASON_TAG]
    assert "difference vs champion v1 +0.0000" in reason and "on 36 images" in reason
    assert champion_version(client, NAME) == "1"


def test_register_without_evaluate_outputs_names_the_missing_file(
    evaluation_project, tiny_classifier, log_model, caplog
):
    model = tiny_classifier()
    write_train_outputs(model, *log_model(model))

    with pytest.raises(SystemExit, match="1"):
        register.main()

    assert f"{paths.METRICS_FILE}: cannot be read as JSON" in caplog.text
    assert not paths.REGISTRATION_FILE.exists()


def test_with_views_evaluate_chooses_on_and_register_serves_the_averaged_scores(
    evaluation_project, log_model
):
    """predict.views 4: validation is scored again with the views, the served model answers
    evaluate's test probabilities, its drift reference holds the averaged validation scores,
    and the version says its views."""
    import yaml

    from melanoma.config import PARAMS_FILE
    from melanoma.inference.predict import load_model, model_location, predict_split, stored_file
    from melanoma.inference.views import views_of, with_views
    from melanoma.labels import MELANOMA_INDEX
    from melanoma.metrics import predictions_table, read_predictions
    from melanoma.sites.drift import DriftReference
    from tests.helpers import position_classifier

    test_paths, test_labels = evaluation_project
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["predict"] = {"views": 4}
    PARAMS_FILE.write_text(yaml.safe_dump(raw))
    model = position_classifier()
    run_id, model_uri = log_model(model)
    write_train_outputs(model, run_id, model_uri)
    # train's validation predictions (one view) and drift reference, of real images
    one_view = predict_split(model, test_paths, test_labels, 8)
    validation = predictions_table(test_paths, test_labels, one_view)
    validation.to_csv(paths.VALIDATION_PREDICTIONS, index=False)
    reference = DriftReference.load(paths.DRIFT_REFERENCE_FILE)
    DriftReference(validation["p_melanoma"].to_numpy(), reference.features[: len(test_paths)]).save(
        paths.DRIFT_REFERENCE_FILE
    )

    evaluate.main()
    register.main()

    averaged = predict_split(with_views(model, 4), test_paths, test_labels, 8)
    _, evaluated = read_predictions(paths.PREDICTIONS_FILE)
    assert abs(averaged - one_view).max() > 1e-3
    assert abs(evaluated - averaged).max() < 1e-5
    version = MlflowClient().get_model_version(NAME, "1")
    assert version.tags["predict_views"] == "4"
    served = load_model(f"models:/{NAME}/1", views=1)
    assert views_of(served) == 4
    assert abs(predict_split(served, test_paths, test_labels, 8) - averaged).max() < 1e-5
    drift = DriftReference.load(
        stored_file(model_location(f"models:/{NAME}/1"), paths.DRIFT_REFERENCE_FILE.name)
    )
    assert abs(drift.melanoma - averaged[:, MELANOMA_INDEX]).max() < 1e-5
    assert len(drift.features) == len(test_paths)  # train's features, of the image itself


def test_an_ensemble_is_evaluated_explained_registered_and_served_as_one_model(
    evaluation_project, log_model
):
    """train.ensemble: the mean of the members' probabilities is what evaluate reports, what
    its Grad-CAM gallery explains, and what the registered version answers."""
    import numpy as np

    from melanoma.inference.predict import load_model, predict_split
    from melanoma.metrics import read_predictions
    from tests.helpers import MODEL_SIZE, whole_ensemble

    test_paths, test_labels = evaluation_project
    model, members = whole_ensemble(2, image_size=MODEL_SIZE)
    run_id, model_uri = log_model(model)
    write_train_outputs(model, run_id, model_uri)

    evaluate.main()
    register.main()

    mean = np.mean([predict_split(m, test_paths, test_labels, 8) for m in members], axis=0)
    _, evaluated = read_predictions(paths.PREDICTIONS_FILE)
    assert abs(evaluated - mean).max() < 1e-5
    assert paths.GALLERY_FILE.stat().st_size > 0
    served = load_model(f"models:/{NAME}/1", views=1)
    assert abs(predict_split(served, test_paths, test_labels, 8) - mean).max() < 1e-5
