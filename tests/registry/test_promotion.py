import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.params.evaluation import PromotionParams
from melanoma.registry.promotion import (
    DECISION_TAG,
    HISTORY_TAG,
    KEPT,
    MANUAL_TAG,
    PROMOTED,
    REASON_TAG,
    SOURCE_RUN_TAG,
    THRESHOLD_TAG,
    RegistryError,
    ScoredImages,
    champion_probabilities,
    champion_version,
    decide_promotion,
    paired_bootstrap,
    promote_by_hand,
    register_and_decide,
    register_version,
    registered_threshold,
    rollback,
    source_run,
)
from melanoma.tracking import configure_tracking
from tests.helpers import train_run_info

NAME = "melanoma-test"  # registry.model_name of the mlflow_project params


# --- the rule, on made-up predictions --------------------------------------------------------

PROMOTION = PromotionParams(bootstrap_samples=300, confidence=0.95, seed=0)


def _made_up(n: int = 400, signal: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(label_indices, probabilities) of n images, half melanoma; `signal` sets how well P(melanoma)
    separates them (0: chance)."""
    rng = np.random.default_rng(seed)
    label_indices = np.where(np.arange(n) % 2 == 0, MELANOMA_INDEX, LABELS.index("nevus"))
    score = rng.normal(0, 1, n) + signal * (label_indices == MELANOMA_INDEX)
    probabilities = np.full((n, len(LABELS)), 0.0)
    probabilities[:, MELANOMA_INDEX] = 1 / (1 + np.exp(-score))
    probabilities[:, LABELS.index("nevus")] = 1 - probabilities[:, MELANOMA_INDEX]
    return label_indices, probabilities


def _images(label_indices: np.ndarray, probabilities: np.ndarray) -> ScoredImages:
    sets = np.where(np.arange(len(label_indices)) < len(label_indices) // 4, "test", "external")
    return ScoredImages(label_indices, probabilities, sets)


def _decide(
    challenger: np.ndarray, champion: np.ndarray, label_indices: np.ndarray, margin: float = 0.0
):
    comparison = paired_bootstrap(
        "melanoma_auc", _images(label_indices, challenger), champion, PROMOTION
    )
    return comparison, decide_promotion("4", comparison, margin)


def test_first_version_becomes_champion():
    assert decide_promotion(None, None, 0.05).promote


def test_an_identical_challenger_never_moves_the_alias():
    label_indices, probabilities = _made_up()
    comparison, decision = _decide(probabilities, probabilities.copy(), label_indices)
    assert comparison.difference == comparison.low == comparison.high == 0.0
    assert not decision.promote and "not shown to be better" in decision.reason


def test_a_clearly_better_challenger_moves_it_and_the_reason_says_by_how_much():
    label_indices, weak = _made_up(signal=0.3, seed=1)
    _, strong = _made_up(signal=2.5, seed=1)
    comparison, decision = _decide(strong, weak, label_indices)

    assert comparison.low > 0.1 and decision.promote
    assert comparison.images == {"external": 300, "test": 100}
    for part in ("melanoma_auc difference vs champion v4 +", "95% paired bootstrap", "400 images"):
        assert part in decision.reason
    # The same gain, but a margin above the lower bound, is not enough.
    assert not decide_promotion("4", comparison, comparison.low + 0.01).promote


def test_an_equal_model_with_other_noise_does_not_move_it():
    # Same skill, independent random errors: two trainings that differ only by their seed.
    label_indices, champion = _made_up(signal=1.5, seed=2)
    for seed in range(3, 8):
        _, challenger = _made_up(signal=1.5, seed=seed)
        comparison, decision = _decide(challenger, champion, label_indices)
        assert comparison.difference != 0
        assert not decision.promote


def test_resampling_keeps_each_set_whole_and_is_seeded():
    label_indices, probabilities = _made_up(seed=3)
    _, other = _made_up(seed=4)
    first = paired_bootstrap(
        "balanced_accuracy", _images(label_indices, probabilities), other, PROMOTION
    )
    assert first == paired_bootstrap(
        "balanced_accuracy", _images(label_indices, probabilities), other, PROMOTION
    )
    assert first.samples == 300


def test_undefined_metric_or_unscorable_champion():
    label_indices = np.full(20, MELANOMA_INDEX)  # no other class: no AUC in any draw
    _, probabilities = _made_up(20)
    comparison = paired_bootstrap(
        "melanoma_auc", _images(label_indices, probabilities), probabilities, PROMOTION
    )
    assert not decide_promotion("1", comparison, 0.0).promote
    assert decide_promotion("1", None, 0.0).promote  # the champion could not be scored


# --- against a real SQLite registry --------------------------------------------------------


@pytest.fixture
def model_uri(mlflow_project, tiny_classifier, log_model) -> str:
    """One logged model."""
    return log_model(tiny_classifier())[1]


@pytest.fixture
def new_model(mlflow_project, tiny_classifier, log_model):
    """new_model() logs another model (a training run of its own): (run id, model URI)."""
    return lambda: log_model(tiny_classifier())


TRUE, WEAK = _made_up(signal=0.2, seed=5)
_, STRONG = _made_up(signal=3.0, seed=5)


def _register(mlflow_project, model, challenger, champion_scores=None):
    """register_and_decide of model (run id, model URI) with the champion's probabilities
    looked up in champion_scores."""
    scored = []
    run_id, model_uri = model

    def score_champion(uri: str) -> np.ndarray | None:
        scored.append(uri)
        return champion_scores[uri]

    version, decision = register_and_decide(
        model_uri,
        run_id,
        mlflow_project.registry,
        "tiny model",
        {"git_commit": "abc"},
        _images(TRUE, challenger),
        score_champion,
    )
    return version, decision, scored


def _tags(version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(NAME, version).tags


def test_registration_and_promotion_rules_in_the_registry(mlflow_project, new_model):
    client = MlflowClient()

    first, decision, scored = _register(mlflow_project, new_model(), WEAK)
    assert decision.promote and scored == []
    assert champion_version(client, NAME) == first == "1"
    assert _tags(first)[DECISION_TAG] == PROMOTED and _tags(first)["git_commit"] == "abc"
    assert client.get_model_version(NAME, first).description == "tiny model"

    # The champion is re-scored on the same images, not trusted from its tags.
    better, decision, scored = _register(
        mlflow_project, new_model(), STRONG, {"models:/melanoma-test/1": WEAK}
    )
    assert scored == ["models:/melanoma-test/1"]
    assert decision.promote and champion_version(client, NAME) == better == "2"

    worse, decision, _ = _register(
        mlflow_project, new_model(), WEAK, {"models:/melanoma-test/2": STRONG}
    )
    assert not decision.promote and champion_version(client, NAME) == "2"
    assert _tags(worse)[DECISION_TAG] == KEPT
    assert "melanoma_auc difference vs champion v2 -" in _tags(worse)[REASON_TAG]

    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == ["1", "2"]


def test_the_same_model_keeps_its_version_and_its_decision_is_refreshed(mlflow_project, new_model):
    client = MlflowClient()
    champion = new_model()
    _register(mlflow_project, champion, STRONG)
    challenger = new_model()
    first, decision, _ = _register(
        mlflow_project, challenger, WEAK, {"models:/melanoma-test/1": STRONG}
    )
    assert (first, decision.promote) == ("2", False)

    # Registered again (evaluate ran again): the same version, compared again, tags refreshed.
    again, decision, scored = _register(
        mlflow_project, challenger, WEAK, {"models:/melanoma-test/1": STRONG}
    )
    assert again == first and not decision.promote and scored == ["models:/melanoma-test/1"]
    # The champion registered again stays champion without being compared with itself.
    same, decision, scored = _register(mlflow_project, champion, STRONG)
    assert (same, decision.promote, scored) == ("1", True, [])
    versions = client.search_model_versions(f"name='{NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG]) == ["1"]


def test_margin_comes_from_the_registry_params(mlflow_project, new_model):
    label_indices, probabilities = _made_up(seed=6)
    _, better = _made_up(signal=2.0, seed=6)
    images = _images(label_indices, better)
    gain = paired_bootstrap("melanoma_auc", images, probabilities, PROMOTION).low
    params = mlflow_project.registry.model_copy(update={"min_improvement": gain + 0.05})
    register_and_decide(*new_model(), params, "d", {}, images, lambda uri: None)
    version, decision = register_and_decide(
        *new_model(), params, "d", {}, images, lambda uri: probabilities
    )
    assert not decision.promote
    assert champion_version(MlflowClient(), NAME) == "1"


def test_promote_by_hand_then_roll_back(mlflow_project, new_model):
    client = MlflowClient()
    for _ in range(3):  # v1 champion; v2 and v3 kept (identical)
        _register(mlflow_project, new_model(), WEAK, {"models:/melanoma-test/1": WEAK})

    assert promote_by_hand(client, NAME, "3") == "1"
    assert champion_version(client, NAME) == "3"
    assert "promoted by hand" in _tags("3")[MANUAL_TAG]
    # Registering v3 again (`register` re-run) finds it champion and says why: by hand.
    assert _tags("3")[REASON_TAG] == _tags("3")[MANUAL_TAG]
    assert promote_by_hand(client, NAME, "2") == "3"

    assert rollback(client, NAME) == ("2", "3")
    assert rollback(client, NAME) == ("3", "1")
    assert champion_version(client, NAME) == "1"
    assert "restored by rollback from v3" in _tags("1")[MANUAL_TAG]
    with pytest.raises(RegistryError, match="first champion"):
        rollback(client, NAME)


def test_manual_actions_refuse_what_cannot_be_done(mlflow_project, new_model):
    client = MlflowClient()
    with pytest.raises(RegistryError, match="no champion"):
        rollback(client, NAME)
    _register(mlflow_project, new_model(), WEAK)
    with pytest.raises(RegistryError, match="no version 7"):
        promote_by_hand(client, NAME, "7")
    with pytest.raises(RegistryError, match="already the champion"):
        promote_by_hand(client, NAME, "1")


def test_alias_moved_outside_is_kept_in_the_history(mlflow_project, new_model):
    client = MlflowClient()
    for _ in range(3):
        _register(mlflow_project, new_model(), WEAK, {"models:/melanoma-test/1": WEAK})
    client.set_registered_model_alias(NAME, "champion", "2")  # e.g. in the MLflow UI
    promote_by_hand(client, NAME, "3")
    assert rollback(client, NAME) == ("3", "2")


# --- where the evaluated model comes from ---------------------------------------------------


def test_source_run_is_the_training_run_when_the_store_has_it(
    mlflow_project, tiny_classifier, log_model
):
    run_id, uri = log_model(tiny_classifier())
    info = train_run_info(run_id, uri)
    experiment_id = configure_tracking(mlflow_project.mlflow)
    assert source_run(info, experiment_id, "unused.keras", "unused.png") == (run_id, uri)


def test_missing_training_run_gets_a_new_run_with_the_model_file(
    mlflow_project, tiny_classifier, evaluation_project
):
    paths, _ = evaluation_project
    model = tiny_classifier()
    model.save("model.keras")
    info = train_run_info("0" * 32, "models:/m-gone")
    experiment_id = configure_tracking(mlflow_project.mlflow)

    run_id, uri = source_run(info, experiment_id, "model.keras", paths[0])

    assert run_id != info.run_id
    assert mlflow.get_run(run_id).data.tags[SOURCE_RUN_TAG] == info.run_id
    loaded = mlflow.keras.load_model(uri)
    images = np.zeros((2, 16, 16, 3), np.uint8)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_champion_is_rescored_on_the_same_images(
    mlflow_project, tiny_classifier, log_model, evaluation_project
):
    paths, label_indices = evaluation_project
    always_melanoma = np.full(len(LABELS), 0.02)
    always_melanoma[MELANOMA_INDEX] = 1 - 0.02 * (len(LABELS) - 1)
    _, uri = log_model(tiny_classifier(always_melanoma.tolist()))
    mlflow.register_model(uri, NAME)

    probabilities = champion_probabilities(f"models:/{NAME}/1", paths, label_indices, batch_size=4)

    np.testing.assert_allclose(probabilities, np.tile(always_melanoma, (len(paths), 1)), atol=1e-6)
    assert champion_probabilities(f"models:/{NAME}/9", paths, label_indices, 4) is None


def test_threshold_travels_with_the_registered_version(mlflow_project, model_uri):
    client = MlflowClient()
    register_version(model_uri, NAME, "d", {THRESHOLD_TAG: "0.137"})
    register_version(model_uri, NAME, "d", {})
    client.set_registered_model_alias(NAME, "champion", "1")

    assert registered_threshold(f"models:/{NAME}@champion") == 0.137
    assert registered_threshold(f"models:/{NAME}/1") == 0.137
    assert registered_threshold("models/model.keras") is None
    assert registered_threshold("runs:/abc/model") is None
    with pytest.raises(RegistryError, match="v2 has no melanoma_threshold tag"):
        registered_threshold(f"models:/{NAME}/2")
    with pytest.raises(RegistryError, match="models:/melanoma-test@nobody"):
        registered_threshold(f"models:/{NAME}@nobody")
