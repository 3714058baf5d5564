"""An ensemble of seeds as one Keras model (melanoma.model.ensemble, train.ensemble)."""

import keras
import numpy as np
import pytest

from melanoma.evaluation.explain import grad_cam, heat_maps
from melanoma.inference.unfamiliar import POOLED, depth_of, probe
from melanoma.inference.views import probe as views_probe
from melanoma.inference.views import with_views
from melanoma.labels import LABELS
from melanoma.model.calibration import fold_temperature, rescale
from melanoma.model.ensemble import assemble, is_ensemble, members_of, shared_part
from tests.helpers import ensemble_members, lite_ensemble, whole_ensemble

SIZE = 32


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_whole_model_ensemble_gives_the_mean_of_its_members_and_loads_as_plain_keras(tmp_path):
    ensemble, members = whole_ensemble(3)
    images = _images(5)
    each = [member.predict(images, verbose=0) for member in members]
    assert not np.allclose(each[0], each[1])  # the seeds made different members

    np.testing.assert_allclose(
        ensemble.predict(images, verbose=0), np.mean(each, axis=0), atol=1e-6
    )
    assert is_ensemble(ensemble) and len(members_of(ensemble)) == 3
    assert shared_part(ensemble) is None
    assert not is_ensemble(members[0])

    ensemble.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")  # no custom objects
    np.testing.assert_allclose(loaded.predict(images, verbose=0), np.mean(each, axis=0), atol=1e-6)
    assert loaded.count_params() == sum(m.count_params() for m in members) + len(LABELS) * (
        len(LABELS) + 1
    )


def test_the_temperature_is_folded_once_into_the_mean():
    ensemble, members = whole_ensemble(2)
    images = _images(4)
    mean = np.mean([m.predict(images, verbose=0) for m in members], axis=0)

    fold_temperature(ensemble, 2.5)

    np.testing.assert_allclose(ensemble.predict(images, verbose=0), rescale(mean, 2.5), atol=1e-6)


def test_lite_members_share_one_frozen_part_and_the_probe_reaches_block_14(tmp_path):
    ensemble, frozen, members = lite_ensemble(2, freeze=1)
    images = _images(4)
    activations = frozen.predict(images, verbose=0)
    each = [member.predict(activations, verbose=0) for member in members]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(
        ensemble.predict(images, verbose=0), np.mean(each, axis=0), atol=1e-5
    )
    # The frozen blocks once: the ensemble holds one frozen part and the members' top parts.
    assert ensemble.count_params() == frozen.count_params() + sum(
        m.count_params() for m in members
    ) + len(LABELS) * (len(LABELS) + 1)

    ensemble.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    # The unfamiliar score's layer (unfamiliar.depth's default) is in the shared part.
    assert depth_of(loaded, "block14_add") == "block14_add"
    probabilities, features = probe(loaded, "block14_add").predict(images, verbose=0)
    np.testing.assert_allclose(probabilities, np.mean(each, axis=0), atol=1e-5)
    cut = keras.Model(frozen.inputs, frozen.output)  # block14_add is the cut of freeze 1
    np.testing.assert_allclose(
        features, cut.predict(images, verbose=0).mean(axis=(1, 2)), atol=1e-4
    )
    # POOLED: every member's pooled features (1280 each), side by side.
    _, pooled = probe(loaded, POOLED).predict(images, verbose=0)
    assert pooled.shape == (4, 2 * 1280)
    with pytest.raises(ValueError, match="block15_add is not in the part the members"):
        probe(loaded, "block15_add")


# 9 s; sharing a frozen part, and Grad-CAM at each member's own block, are the freeze-1 tests'
# in the fast suite (tests/evaluation/test_explain.py)
@pytest.mark.slow
def test_a_frozen_backbone_ensemble_shares_the_backbone_and_its_block_explains_the_mean():
    ensemble, frozen, members = lite_ensemble(2, freeze="all")
    images = _images(3)
    features = frozen.predict(images, verbose=0)
    each = [member.predict(features, verbose=0) for member in members]
    np.testing.assert_allclose(
        ensemble.predict(images, verbose=0), np.mean(each, axis=0), atol=1e-5
    )
    assert shared_part(ensemble).name == "efficientnet_lite0_backbone"
    probabilities, block14 = probe(ensemble, "block14_add").predict(images, verbose=0)
    np.testing.assert_allclose(probabilities, np.mean(each, axis=0), atol=1e-5)
    assert block14.shape == (3, 192)
    # Members that are classifiers alone hold no block: Grad-CAM's is the shared backbone's.
    explainer = grad_cam(ensemble)
    assert explainer.layer == "lite_ensemble/efficientnet_lite0_backbone/head_relu6"
    assert len(explainer.features.outputs) == 1
    _, explained = heat_maps(explainer, images, [0, 1, 2])
    np.testing.assert_allclose(explained, np.mean(each, axis=0), atol=1e-5)


def test_views_wrap_an_ensemble_like_any_trained_model(tmp_path):
    ensemble, members = whole_ensemble(2)
    images = _images(3)
    mirrored = images[:, :, ::-1]
    expected = np.mean(
        [np.mean([m.predict(x, verbose=0) for m in members], axis=0) for x in (images, mirrored)],
        axis=0,
    )

    viewed = with_views(ensemble, 2)

    np.testing.assert_allclose(viewed.predict(images, verbose=0), expected, atol=1e-6)
    probabilities, features = views_probe(viewed, POOLED).predict(images, verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert features.shape == (3, 2 * 8)  # each member's pooled features of the image itself
    viewed.save(tmp_path / "views.keras")
    loaded = keras.saving.load_model(tmp_path / "views.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)


def test_an_ensemble_has_two_members_at_least():
    members = ensemble_members(1)
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    with pytest.raises(ValueError, match="at least 2 members"):
        assemble(inputs, inputs, members, "one")


def _outputs(directory):
    from melanoma.paths import TRAIN_OUTPUTS
    from melanoma.training.run import TrainOutputs

    return TrainOutputs(**{k: directory / v.name for k, v in TRAIN_OUTPUTS.items()})


def _val_images(manifest) -> np.ndarray:
    from melanoma.data.dataset import make_dataset
    from melanoma.data.manifest import AUGMENTED_COLUMNS, read_manifest

    rows = read_manifest(manifest, AUGMENTED_COLUMNS).query("split == 'val'")
    dataset = make_dataset(rows["image_path"].tolist(), np.zeros(len(rows), int), SIZE, 64)
    return np.concatenate([images.numpy() for images, _ in dataset])


@pytest.mark.slow  # trains three tiny models with MLflow (15 s): the only run_training of k > 1
def test_train_fits_one_model_per_seed_in_nested_runs_and_saves_their_calibrated_mean(
    augmented_project, tmp_path
):
    # Both runs in one test: the tiny project is built once, and k=1 is the reference.
    from mlflow import MlflowClient

    from melanoma.config import parse_params
    from melanoma.paths import FEATURES_DIR, SOURCES_SUMMARY
    from melanoma.training.run import run_training

    manifest = tmp_path / "data/augmented/manifest.csv"
    augmented_project["train"].update(architecture="simple_cnn", filters=[4], epochs=2)
    single = parse_params(augmented_project)
    augmented_project["train"]["ensemble"] = 2
    params = parse_params(augmented_project)

    info = run_training(
        params, manifest, _outputs(tmp_path / "ensemble"), FEATURES_DIR, SOURCES_SUMMARY
    )
    one = run_training(
        single, manifest, _outputs(tmp_path / "single"), FEATURES_DIR, SOURCES_SUMMARY
    )

    client = MlflowClient(info.tracking_uri)
    parent = client.get_run(info.run_id)
    assert parent.data.tags["ensemble"] == "2"
    children = client.search_runs(
        [info.experiment_id], f"tags.mlflow.parentRunId = '{info.run_id}'"
    )
    members = {run.data.tags["ensemble_member"]: run for run in children}
    assert sorted(members) == ["0", "1"]
    for index, run in members.items():
        assert run.data.tags["seed"] == str(params.train.seed + int(index))
        for curve in ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"):
            steps = [p.step for p in client.get_metric_history(run.info.run_id, curve)]
            assert sorted(steps) == [1, 2], (index, curve)
        assert "validation_accuracy" in run.data.metrics
    # The parent's curves are the members' mean, epoch by epoch.
    loss = {p.step: p.value for p in client.get_metric_history(info.run_id, "loss")}
    for step in (1, 2):
        member_losses = [
            next(
                p.value for p in client.get_metric_history(r.info.run_id, "loss") if p.step == step
            )
            for r in children
        ]
        assert loss[step] == pytest.approx(np.mean(member_losses))
    # k=1 is one model in one run, as before.
    assert not client.search_runs([one.experiment_id], f"tags.mlflow.parentRunId = '{one.run_id}'")
    assert "ensemble" not in client.get_run(one.run_id).data.tags

    images = _val_images(manifest)
    model = keras.saving.load_model(tmp_path / "ensemble/model.keras")
    single_model = keras.saving.load_model(tmp_path / "single/model.keras")
    assert is_ensemble(model) and not is_ensemble(single_model)
    each = [member.predict(images, verbose=0) for member in members_of(model)]
    # Calibrated once: the temperature fitted on the mean of the members' probabilities.
    np.testing.assert_allclose(
        model.predict(images, verbose=0),
        rescale(np.mean(each, axis=0), info.temperature),
        atol=1e-5,
    )
    assert info.temperature != 1.0
    # Member 0 is the model k=1 trains (same seed, same data, same steps).
    np.testing.assert_allclose(
        each[0], rescale(single_model.predict(images, verbose=0), 1 / one.temperature), atol=1e-5
    )
