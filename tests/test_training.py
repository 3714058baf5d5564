import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from melanoma.config import parse_params
from melanoma.data.manifest import (
    AUGMENTED_COLUMNS,
    file_sha256,
    read_manifest,
)
from melanoma.inference.unfamiliar import POOLED, UnfamiliarDetector, probe
from melanoma.labels import LABELS
from melanoma.metrics import read_predictions
from melanoma.model.calibration import negative_log_likelihood, rescale
from melanoma.model.curves import HISTORY_COLUMNS, training_summary
from melanoma.model.optimization import (
    class_weight_map,
    learning_rate,
    make_optimizer,
    sample_weights,
)
from melanoma.paths import FEATURE_STORE_DIR, FEATURES_DIR, SOURCES_SUMMARY, TRAIN_OUTPUTS
from melanoma.sites.drift import DriftReference
from melanoma.sites.fitting import probe_outputs
from melanoma.training.fitting import calibrate
from melanoma.training.run import TrainOutputs, run_training
from tests.helpers import train_params

AUGMENTED = Path("data/augmented/manifest.csv")


def test_no_class_weights_unless_asked():
    assert class_weight_map(np.array([0, 0, 1]), train_params()) is None


def test_balanced_class_weights_then_overrides_replace_one_label():
    labels = np.array([0, 0, 0, 1])  # three actinic_keratosis, one basal_cell_carcinoma
    weights = class_weight_map(labels, train_params(class_weights=True))
    assert weights[0] == pytest.approx(4 / (2 * 3))
    assert weights[1] == pytest.approx(4 / (2 * 1))
    assert weights[LABELS.index("melanoma")] == 1.0  # absent from training

    overridden = train_params(class_weights=True, class_weight_overrides={"melanoma": 3.0})
    weights = class_weight_map(labels, overridden)
    assert weights[LABELS.index("melanoma")] == 3.0
    assert weights[1] == pytest.approx(2.0)

    only_overrides = train_params(class_weight_overrides={"basal_cell_carcinoma": 5.0})
    assert class_weight_map(labels, only_overrides) == {
        i: (5.0 if i == 1 else 1.0) for i in range(len(LABELS))
    }


def test_sources_weigh_alike_within_each_class_and_classes_as_before():
    # Melanoma: 6 images of a large archive, 2 of a small one; nevus: the large archive only.
    labels = np.array([0] * 8 + [1] * 4)
    sources = np.array(["large"] * 6 + ["small"] * 2 + ["large"] * 4)
    assert sample_weights(labels, sources, train_params()) is None

    weights = sample_weights(labels, sources, train_params(source_weighting="equal_per_class"))

    np.testing.assert_allclose(weights[:6], 8 / (2 * 6))
    np.testing.assert_allclose(weights[6:8], 8 / (2 * 2))
    assert weights[:6].sum() == pytest.approx(weights[6:8].sum())
    np.testing.assert_allclose(weights[8:], 1.0)  # one source in the class: nothing changes
    assert weights[:8].sum() == pytest.approx(8)

    both = train_params(source_weighting="equal_per_class", class_weights=True)
    class_weight = class_weight_map(labels, both)
    np.testing.assert_allclose(
        sample_weights(labels, sources, both), weights * [class_weight[i] for i in labels]
    )


def test_a_source_weight_scales_its_images_after_the_other_weights():
    labels = np.array([0] * 8 + [1] * 4)
    sources = np.array(["large"] * 6 + ["small"] * 2 + ["large"] * 4)
    even = sample_weights(labels, sources, train_params(source_weighting="equal_per_class"))

    halved = sample_weights(
        labels,
        sources,
        train_params(source_weighting="equal_per_class", source_weights={"large": 0.5}),
    )

    np.testing.assert_allclose(halved[sources == "large"], 0.5 * even[sources == "large"])
    np.testing.assert_allclose(halved[sources == "small"], even[sources == "small"])
    alone = sample_weights(labels, sources, train_params(source_weights={"small": 2.0}))
    np.testing.assert_allclose(alone, np.where(sources == "small", 2.0, 1.0))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
        ("sgd", keras.optimizers.SGD),
    ],
)
def test_optimizer_and_weight_decay_come_from_params(name, expected):
    optimizer = make_optimizer(
        train_params(optimizer=name, weight_decay=0.01, learning_rate=0.005), steps_per_epoch=10
    )
    assert type(optimizer) is expected
    assert optimizer.weight_decay == 0.01
    assert float(optimizer.learning_rate) == pytest.approx(0.005)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero_at_the_last_step():
    params = train_params(lr_schedule="cosine", learning_rate=0.01, epochs=5, warmup_epochs=1)
    schedule = learning_rate(params, steps_per_epoch=10)
    rate = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert rate[:3] == pytest.approx([0.0, 0.005, 0.01])
    assert rate[3] == pytest.approx(0.005)  # halfway through the 40 decay steps
    assert rate[4] == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(train_params(learning_rate=0.01), steps_per_epoch=10) == 0.01


def test_speed_leaves_out_the_first_epoch_and_best_epoch_has_the_lowest_val_loss():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "accuracy": [0.3, 0.5, 0.6],
            "val_accuracy": [0.2, 0.4, 0.3],
            "loss": [2.0, 1.5, 1.2],
            "val_loss": [2.1, 1.7, 1.9],
            "learning_rate": [0.001] * 3,
        }
    )
    summary = training_summary(history, [10.0, 2.0, 4.0], train_images=300, early_stopping=True)
    assert summary.seconds_per_epoch == 3.0
    assert summary.images_per_second == 100.0
    assert summary.best_epoch == 2 and summary.best.val_accuracy == 0.4
    assert summary.final.val_accuracy == 0.3
    assert summary.saved_model_epoch == 2


@pytest.mark.parametrize("calibration", ["none", "temperature"])
def test_calibrate_folds_the_fitted_temperature_into_the_model_or_leaves_it(calibration):
    inputs = keras.Input((3,))
    model = keras.Model(
        inputs, keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")(inputs)
    )
    x = np.random.default_rng(0).normal(size=(60, 3)).astype("float32") * 5
    label_indices = np.random.default_rng(1).integers(
        0, len(LABELS), 60
    )  # unrelated: overconfident
    before = model.predict(x, verbose=0)
    params = train_params(calibration=calibration)

    fitted = calibrate(model, params, label_indices, before)

    after = model.predict(x, verbose=0)
    if calibration == "none":
        assert fitted.temperature == 1.0 and np.array_equal(after, before)
    else:
        assert fitted.temperature > 1.0
        np.testing.assert_allclose(after, rescale(before, fitted.temperature), atol=1e-5)
    assert fitted.validation_ece <= fitted.validation_ece_uncalibrated + 1e-12


@pytest.mark.slow  # trains twice, for real
def test_training_run_is_tracked_per_epoch_and_reproducible(augmented_project, tmp_path):
    # With the random levers on: seeded, they must not break reproducibility.
    augmented_project["train"].update(
        random_flip=True,
        random_rotation_degrees=90,
        optimizer="adamw",
        weight_decay=0.05,
        lr_schedule="cosine",
        reduce_lr_patience=0,
    )
    params = parse_params(augmented_project)
    epochs = params.train.epochs
    first = TrainOutputs(
        model=tmp_path / "a/model.keras",
        unfamiliar=tmp_path / "a/unfamiliar.npz",
        drift_reference=tmp_path / "a/drift_reference.npz",
        run_info=tmp_path / "a/run.json",
        metrics=tmp_path / "a/metrics.json",
        history=tmp_path / "a/history.csv",
        validation_predictions=tmp_path / "a/validation_predictions.csv",
    )
    run_info = run_training(params, AUGMENTED, first, FEATURES_DIR, SOURCES_SUMMARY)

    assert json.loads(first.run_info.read_text()) == run_info.to_dict()
    assert run_info.labels == list(LABELS)
    assert run_info.image_size == params.train.image_size
    assert run_info.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"

    client = MlflowClient(run_info.tracking_uri)
    run = client.get_run(run_info.run_id)
    assert run.info.experiment_id == run_info.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == params.mlflow.experiment
    assert run.data.params["train.epochs"] == str(epochs)
    assert run.data.params["augment.target_per_class"] == "8"
    assert run.data.tags["stage"] == "train"
    assert run.info.run_name.startswith(f"{params.train.architecture} seed {params.train.seed} ")
    assert run.data.tags["data_manifest_sha256"] == file_sha256(AUGMENTED)
    assert run.data.tags["git_commit"]
    for curve in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        points = client.get_metric_history(run.info.run_id, curve)
        assert sorted(p.step for p in points) == list(range(1, epochs + 1)), curve
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "labels.json"} <= artifacts

    history = pd.read_csv(first.history)
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    metrics = json.loads(first.metrics.read_text())
    assert metrics["epochs_run"] == epochs
    assert metrics["images_per_second"] > 0
    train_rows = read_manifest(AUGMENTED, AUGMENTED_COLUMNS).query("split == 'train'")
    assert metrics["train_images"] == len(train_rows)
    # The threshold-free headline figures on the validation split, in the file and the run.
    validation = metrics["validation"]
    assert 0 <= validation["accuracy"] <= 1 and 0 <= validation["balanced_accuracy"] <= 1
    assert run.data.metrics["validation_accuracy"] == pytest.approx(validation["accuracy"])
    assert run.data.metrics["validation_balanced_accuracy"] == pytest.approx(
        validation["balanced_accuracy"]
    )
    val_rows = read_manifest(AUGMENTED, AUGMENTED_COLUMNS).query("split == 'val'")
    val_predictions = pd.read_csv(first.validation_predictions)
    assert sorted(val_predictions["image_path"]) == sorted(val_rows["image_path"])
    accuracy = (val_predictions["label"] == val_predictions["predicted"]).mean()
    assert accuracy == pytest.approx(validation["accuracy"])
    # Calibrated (the default): T is fitted on these predictions and folded into the model, so
    # the saved validation probabilities are the calibrated ones, at least as likely as before.
    temperature = metrics["calibration"]["temperature"]
    assert run_info.temperature == temperature != 1.0
    assert run.data.metrics["temperature"] == pytest.approx(temperature)
    label_indices, calibrated = read_predictions(first.validation_predictions)
    uncalibrated = rescale(calibrated, 1 / temperature)
    assert negative_log_likelihood(label_indices, calibrated) <= negative_log_likelihood(
        label_indices, uncalibrated
    )

    # The saved model's contract, and the logged model is the same model.
    model = keras.saving.load_model(first.model)
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (3, len(LABELS))
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    logged = mlflow.keras.load_model(run_info.model_uri)
    assert np.allclose(logged.predict(images, verbose=0), probabilities, atol=1e-6)
    signature = mlflow.models.get_model_info(run_info.model_uri).signature
    assert signature.inputs.inputs[0].type == np.dtype("uint8")

    # The unfamiliar-image score beside the model: its threshold flags the validation share
    # asked for (the tiny split: at most one image), and it is logged with the run.
    detector = UnfamiliarDetector.load(first.unfamiliar)
    assert detector.depth == POOLED  # a resnet has no EfficientNet-Lite0 block 14
    val_paths = val_rows["image_path"].tolist()
    _, features = probe_outputs(probe(model, POOLED), val_paths, 32, batch_size=8)
    assert detector.is_unfamiliar(detector.scores(features)).sum() <= 1
    # The drift reference is what the saved model gives on the validation split.
    drift = DriftReference.load(first.drift_reference)
    np.testing.assert_allclose(drift.features, features, atol=1e-5)
    np.testing.assert_allclose(drift.melanoma, val_predictions["p_melanoma"], atol=1e-5)
    assert run.data.metrics["unfamiliar_threshold"] == pytest.approx(detector.threshold)

    # Same params, same data: the same curves, to the last bit.
    second = TrainOutputs(**{k: tmp_path / "b" / v.name for k, v in vars(first).items()})
    rerun = run_training(params, AUGMENTED, second, FEATURES_DIR, SOURCES_SUMMARY)
    assert rerun.run_id != run_info.run_id
    pd.testing.assert_frame_equal(pd.read_csv(second.history), history)


def _one_step_changes(backbone_learning_rate: float | None) -> tuple[np.ndarray, np.ndarray]:
    """How much one AdamW step (weight decay on) moves the backbone and the head of a tiny
    model with a nested backbone, from the same start."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    inner_in = keras.Input((4,))
    backbone = keras.Model(inner_in, keras.layers.Dense(3)(inner_in), name="backbone")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(backbone(inputs)))
    params = train_params(
        optimizer="adamw",
        weight_decay=0.1,
        learning_rate=0.01,
        backbone_learning_rate=backbone_learning_rate,
        architecture="efficientnet_lite0",
    )
    from melanoma.model.optimization import compile_model

    compile_model(model, params, steps_per_epoch=1)
    model.run_eagerly = True  # the same single step, without tracing it
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(8) % 2]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    change = [np.abs(a - b) for a, b in zip(model.get_weights(), before, strict=True)]
    return change[0], change[2]  # backbone kernel, head kernel


def test_the_backbone_steps_at_its_own_learning_rate():
    backbone_same, head_same = _one_step_changes(None)
    backbone_slow, head_slow = _one_step_changes(0.001)
    assert backbone_same.max() > 0
    # Adam's first step and the decoupled decay are both proportional to the rate.
    np.testing.assert_allclose(backbone_slow, backbone_same / 10, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(head_slow, head_same, rtol=1e-6)


@pytest.mark.slow  # EfficientNet-Lite0 features, then training
def test_a_frozen_backbone_trains_its_head_on_cached_features_and_saves_the_whole_model(
    augmented_project, tmp_path
):
    from melanoma.inference.predict import predict_files
    from melanoma.metrics import probability_column
    from melanoma.model.efficientnet_lite import pretrained_backbone
    from melanoma.model.features import FeatureCacheError, read_feature_cache, write_feature_cache

    augmented_project["train"].update(
        architecture="efficientnet_lite0", freeze="all", random_flip=False, learning_rate=0.01
    )
    augmented_project["preprocess"] = {"color_constancy": "shades_of_gray", "shades_of_gray_p": 6}
    params = parse_params(augmented_project)
    outputs = TrainOutputs(**{k: tmp_path / v.name for k, v in TRAIN_OUTPUTS.items()})
    with pytest.raises(FeatureCacheError, match="no feature cache; run `dvc repro features`"):
        run_training(params, AUGMENTED, outputs, FEATURES_DIR, SOURCES_SUMMARY)

    write_feature_cache(params.train, params.preprocess, AUGMENTED, FEATURES_DIR, FEATURE_STORE_DIR)
    run_training(params, AUGMENTED, outputs, FEATURES_DIR, SOURCES_SUMMARY)

    model = keras.saving.load_model(outputs.model)
    assert model.inputs[0].dtype == "uint8"
    # `melanoma predict` with the saved end-to-end model gives, from the image files, the
    # probabilities the head gave from the cached features: the head's weights are in it, and
    # the features (colour constancy included) are its own.
    predictions = pd.read_csv(outputs.validation_predictions)
    predicted = predict_files(
        model, [Path(p) for p in predictions["image_path"]], params.ingest.image_size, 10**8
    )
    expected = predictions[[probability_column(label) for label in LABELS]].to_numpy()
    found = [[p.probabilities[label] for label in LABELS] for p in predicted]
    np.testing.assert_allclose(found, expected, atol=1e-5)
    # Only the head trained: the backbone still has the ImageNet weights.
    pretrained = pretrained_backbone("efficientnet_lite0", params.train.image_size).get_weights()
    saved = model.get_layer("efficientnet_lite0_backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, pretrained, strict=True))

    # Features made for another input size are not silently reused.
    other = params.train.model_copy(update={"image_size": 48})
    with pytest.raises(FeatureCacheError, match="'image_size': 32.*'image_size': 48"):
        read_feature_cache(other, params.preprocess, {"train": [], "val": []}, FEATURES_DIR)


@pytest.mark.slow  # fine-tunes EfficientNet-Lite0
def test_fine_tuning_trains_the_top_blocks_only_and_saves_a_plain_keras_model(
    augmented_project, tmp_path
):
    from melanoma.model.efficientnet_lite import pretrained_backbone
    from melanoma.model.features import write_feature_cache

    augmented_project["train"].update(
        architecture="efficientnet_lite0", freeze=1, backbone_learning_rate=0.0001, epochs=1
    )
    params = parse_params(augmented_project)
    outputs = TrainOutputs(**{k: tmp_path / v.name for k, v in TRAIN_OUTPUTS.items()})
    write_feature_cache(params.train, params.preprocess, AUGMENTED, FEATURES_DIR, FEATURE_STORE_DIR)
    run_info = run_training(params, AUGMENTED, outputs, FEATURES_DIR, SOURCES_SUMMARY)

    # Saved without the per-backbone-rate optimizer: plain Keras and MLflow load it.
    model = keras.saving.load_model(outputs.model)
    assert getattr(model, "optimizer", None) is None
    logged = mlflow.keras.load_model(run_info.model_uri)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        logged.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    reference = pretrained_backbone("efficientnet_lite0", params.train.image_size)
    saved = model.get_layer("efficientnet_lite0_backbone")
    for layer in reference.layers:
        if not layer.weights:
            continue
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                layer.get_weights(), saved.get_layer(layer.name).get_weights(), strict=True
            )
        )
        # The top block's and the head's convolutions moved; the rest, and every (pretrained)
        # batch norm, kept the ImageNet weights.
        moves = layer.name.startswith(("block15_", "head_")) and layer.name.endswith("_conv")
        assert same is not moves, layer.name
