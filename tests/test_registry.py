import json
import math

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.registry import (
    DECISION_TAG,
    HISTORY_TAG,
    KEPT,
    MANUAL_TAG,
    PROMOTED,
    REASON_TAG,
    SOURCE_RUN_TAG,
    RegistryError,
    champion_version,
    decide_promotion,
    promote_by_hand,
    read_run_info,
    register_and_decide,
    rollback,
    score_model,
    source_run,
)
from melanoma.tracking import configure_tracking

NAME = "melanoma-test"  # registry.model_name of the mlflow_project params


# --- the rule, on numbers ------------------------------------------------------------------


def test_first_version_becomes_champion():
    assert decide_promotion("accuracy", 0.1, None, None, 0.05).promote


@pytest.mark.parametrize(
    ("new", "champion", "margin", "promote"),
    [
        (0.75, 0.70, 0.0, True),  # better
        (0.65, 0.70, 0.0, False),  # worse
        (0.70, 0.70, 0.0, False),  # equal is not better
        (0.72, 0.70, 0.05, False),  # better, but within the margin
        (0.72, 0.70, 0.02, True),  # exactly the margin (0.72 - 0.70 < 0.02 in floating point)
    ],
)
def test_champion_moves_only_when_beaten_by_the_margin(new, champion, margin, promote):
    decision = decide_promotion("balanced_accuracy", new, "3", champion, margin)
    assert decision.promote is promote
    if champion != new:
        assert "balanced_accuracy" in decision.reason and "v3" in decision.reason


def test_undefined_scores():
    assert not decide_promotion("melanoma_auc", math.nan, "1", 0.8, 0.0).promote
    assert decide_promotion("melanoma_auc", 0.8, "1", None, 0.0).promote  # champion unscorable


# --- against a real SQLite registry --------------------------------------------------------


@pytest.fixture
def model_uri(mlflow_project, tiny_classifier, log_model) -> str:
    """One logged model; registering it again makes another version of the same model."""
    return log_model(tiny_classifier())[1]


def _register(mlflow_project, model_uri, new_score, champion_scores=None):
    """register_and_decide with the champion's re-score looked up in champion_scores."""
    scored = []

    def score_champion(uri: str) -> float:
        scored.append(uri)
        return champion_scores[uri]

    version, decision = register_and_decide(
        model_uri,
        mlflow_project.registry,
        new_score,
        "tiny model",
        {"git_commit": "abc"},
        score_champion,
    )
    return version, decision, scored


def _tags(version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(NAME, version).tags


def test_registration_and_promotion_rules_in_the_registry(mlflow_project, model_uri):
    client = MlflowClient()

    first, decision, scored = _register(mlflow_project, model_uri, 0.5)
    assert decision.promote and scored == []
    assert champion_version(client, NAME) == first == "1"
    assert _tags(first)[DECISION_TAG] == PROMOTED and _tags(first)["git_commit"] == "abc"
    assert client.get_model_version(NAME, first).description == "tiny model"

    # The champion is re-scored on the current test data, not trusted from its tags.
    better, decision, scored = _register(
        mlflow_project, model_uri, 0.6, {"models:/melanoma-test/1": 0.55}
    )
    assert scored == ["models:/melanoma-test/1"]
    assert decision.promote and champion_version(client, NAME) == better == "2"

    worse, decision, _ = _register(mlflow_project, model_uri, 0.4, {"models:/melanoma-test/2": 0.6})
    assert not decision.promote and champion_version(client, NAME) == "2"
    assert _tags(worse)[DECISION_TAG] == KEPT
    assert "0.4000 vs champion v2 0.6000" in _tags(worse)[REASON_TAG]

    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == ["1", "2"]


def test_margin_comes_from_the_registry_params(mlflow_project, model_uri):
    params = mlflow_project.registry.model_copy(update={"min_improvement": 0.1})
    register_and_decide(model_uri, params, 0.5, "d", {}, lambda uri: None)
    version, decision = register_and_decide(model_uri, params, 0.55, "d", {}, lambda uri: 0.5)
    assert not decision.promote
    assert champion_version(MlflowClient(), NAME) == "1"


def test_promote_by_hand_then_roll_back(mlflow_project, model_uri):
    client = MlflowClient()
    for score in (0.5, 0.4, 0.3):  # v1 champion; v2 and v3 kept
        _register(mlflow_project, model_uri, score, {"models:/melanoma-test/1": 0.5})

    assert promote_by_hand(client, NAME, "3") == "1"
    assert champion_version(client, NAME) == "3"
    assert "promoted by hand" in _tags("3")[MANUAL_TAG]
    assert promote_by_hand(client, NAME, "2") == "3"

    assert rollback(client, NAME) == ("2", "3")
    assert rollback(client, NAME) == ("3", "1")
    assert champion_version(client, NAME) == "1"
    assert "restored by rollback from v3" in _tags("1")[MANUAL_TAG]
    with pytest.raises(RegistryError, match="first champion"):
        rollback(client, NAME)


def test_manual_actions_refuse_what_cannot_be_done(mlflow_project, model_uri):
    client = MlflowClient()
    with pytest.raises(RegistryError, match="no champion"):
        rollback(client, NAME)
    _register(mlflow_project, model_uri, 0.5)
    with pytest.raises(RegistryError, match="no version 7"):
        promote_by_hand(client, NAME, "7")
    with pytest.raises(RegistryError, match="already the champion"):
        promote_by_hand(client, NAME, "1")


def test_alias_moved_outside_is_kept_in_the_history(mlflow_project, model_uri):
    client = MlflowClient()
    for _ in range(3):
        _register(mlflow_project, model_uri, 0.5, {"models:/melanoma-test/1": 0.5})
    client.set_registered_model_alias(NAME, "champion", "2")  # e.g. in the MLflow UI
    promote_by_hand(client, NAME, "3")
    assert rollback(client, NAME) == ("3", "2")


# --- where the evaluated model comes from ---------------------------------------------------


def test_source_run_is_the_training_run_when_the_store_has_it(
    mlflow_project, tiny_classifier, log_model
):
    run_id, uri = log_model(tiny_classifier())
    info = {"run_id": run_id, "model_uri": uri, "image_size": 16}
    experiment_id = configure_tracking(mlflow_project.mlflow)
    assert source_run(info, experiment_id, "unused.keras", "unused.png") == (run_id, uri)


def test_missing_training_run_gets_a_new_run_with_the_model_file(
    mlflow_project, tiny_classifier, evaluation_project
):
    paths, _ = evaluation_project
    model = tiny_classifier()
    model.save("model.keras")
    info = {"run_id": "0" * 32, "model_uri": "models:/m-gone", "image_size": 16}
    experiment_id = configure_tracking(mlflow_project.mlflow)

    run_id, uri = source_run(info, experiment_id, "model.keras", paths[0])

    assert run_id != info["run_id"]
    assert mlflow.get_run(run_id).data.tags[SOURCE_RUN_TAG] == info["run_id"]
    loaded = mlflow.keras.load_model(uri)
    images = np.zeros((2, 16, 16, 3), np.uint8)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_run_info_must_come_from_train(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(RegistryError, match="lacks"):
        read_run_info(path)
    with pytest.raises(RegistryError, match="cannot be read"):
        read_run_info(tmp_path / "missing.json")


def test_score_model_rescoring_a_registered_version(
    mlflow_project, tiny_classifier, log_model, evaluation_project
):
    paths, true = evaluation_project
    always_melanoma = np.full(len(LABELS), 0.02)
    always_melanoma[MELANOMA_INDEX] = 1 - 0.02 * (len(LABELS) - 1)
    _, uri = log_model(tiny_classifier(always_melanoma.tolist()))
    mlflow.register_model(uri, NAME)

    score = score_model(f"models:/{NAME}/1", paths, true, 0.3, "accuracy", batch_size=4)

    assert score == pytest.approx(1 / len(LABELS))  # right on the melanoma images only
    assert score_model(f"models:/{NAME}/9", paths, true, 0.3, "accuracy", 4) is None
