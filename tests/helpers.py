"""Helpers shared by test modules (fixtures live in conftest.py)."""

import io
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from melanoma import paths
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.params.model import TrainParams
from melanoma.reports import RunInfo


def train_params(**overrides) -> TrainParams:
    """TrainParams of a tiny network trained for one epoch (simple_cnn, 32 px, one block of 4
    filters, batch 4, no early stopping or learning-rate reduction), with `overrides`."""
    values = {
        "architecture": "simple_cnn",
        "image_size": 32,
        "filters": [4],
        "dropout": 0.0,
        "learning_rate": 0.01,
        "batch_size": 4,
        "epochs": 1,
        "early_stopping_patience": 0,
        "reduce_lr_patience": 0,
    }
    return TrainParams(**{**values, **overrides})


def ensemble_members(k: int, **overrides) -> list:
    """k tiny simple_cnn models (train_params with filters [4, 8] and `overrides`), each built
    with its own seed (different weights)."""
    import keras

    from melanoma.model.architectures import build_model

    members = []
    for index in range(k):
        keras.utils.set_random_seed(index)
        members.append(build_model(train_params(seed=index, **{"filters": [4, 8], **overrides})))
    return members


def whole_ensemble(k: int, **overrides) -> tuple:
    """(an ensemble of k ensemble_members, the members): whole models, nothing shared."""
    import keras

    from melanoma.model.ensemble import assemble

    members = ensemble_members(k, **overrides)
    size = members[0].input_shape[1]
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    return assemble(inputs, inputs, members, "simple_cnn_ensemble"), members


def lite_ensemble(k: int, freeze, **overrides) -> tuple:
    """(a tiny Lite0 ensemble as `train` assembles one, its frozen part, its members): the
    frozen part of one full model, and k trainable parts, each from its own seed (random
    weights: training would only move them). `overrides` go to train_params."""
    import keras

    from melanoma.model.architectures import build_model, build_trainable_part, frozen_part
    from melanoma.model.ensemble import assemble

    params = train_params(
        **{"architecture": "efficientnet_lite0", "freeze": freeze, "dropout": 0.2, **overrides}
    )
    frozen = frozen_part(build_model(params), params)
    members = []
    for index in range(k):
        keras.utils.set_random_seed(index)
        members.append(build_trainable_part(params, frozen.output.shape[1:]))
    return assemble(frozen.inputs, frozen.outputs[0], members, "lite_ensemble"), frozen, members


# HAM10000's diagnosis codes -> the nine labels, as params.yaml maps them.
HAM_LABELS = {
    "akiec": "actinic_keratosis",
    "bcc": "basal_cell_carcinoma",
    "bkl": "pigmented_benign_keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "nevus",
    "vasc": "vascular_lesion",
}


def write_table_source(
    root: Path, rows: list[dict[str, str]], images: dict[str, bytes], table: str | None = None
) -> Path:
    """A source laid out like HAM10000 at `root`: images/<name> holding `images` ({file name:
    bytes}) and metadata.csv with `rows` (columns lesion_id, image_id, dx), or `table` as the
    CSV text when given. Returns root."""
    (root / "images").mkdir(parents=True)
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    csv = root / "metadata.csv"
    if table is not None:
        csv.write_text(table)
    else:
        pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx"]).to_csv(csv, index=False)
    return root


def table_source_params(path: Path, name: str = "ham", **changes) -> dict:
    """The params of a `table` source written by write_table_source, as in params.yaml."""
    return {
        "name": name,
        "kind": "table",
        "path": str(path),
        "images": "images",
        "table": "metadata.csv",
        "id_column": "image_id",
        "label_column": "dx",
        "lesion_column": "lesion_id",
        "labels": dict(HAM_LABELS),
        **changes,
    }


def train_run_info(run_id: str, model_uri: str, temperature: float = 1.0) -> RunInfo:
    """models/run.json as the train stage writes it for a 16 px model logged in run_id as
    model_uri, in the current tracking store."""
    return RunInfo(
        run_id=run_id,
        experiment_id="0",
        model_uri=model_uri,
        tracking_uri=mlflow.get_tracking_uri(),
        labels=list(LABELS),
        image_size=16,
        temperature=temperature,
    )


def write_train_outputs(model, run_id: str, model_uri: str, temperature: float = 1.0) -> None:
    """models/ as the train stage leaves it, for `model` logged in run_id as model_uri (its
    unfamiliar-image detector and drift reference made of noise images)."""
    Path("models").mkdir(exist_ok=True)
    model.save(paths.MODEL_FILE)
    images = noise_images(40, model.input_shape[1])
    fitted_detector(model, images).save(paths.UNFAMILIAR_FILE)
    drift_reference(model, images).save(paths.DRIFT_REFERENCE_FILE)
    train_run_info(run_id, model_uri, temperature).write(paths.RUN_FILE)


def restore_directory(snapshot: Path, root: Path) -> None:
    """Make `root` hold exactly what its copy `snapshot` holds again. Files are rewritten in
    place, not replaced: MLflow keeps pooled SQLite connections open on a tracking store's
    database file, and would go on reading a replaced file's old inode."""
    for path in sorted(root.rglob("*"), reverse=True):  # a folder's files before the folder
        if not (snapshot / path.relative_to(root)).exists():
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    shutil.copytree(snapshot, root, dirs_exist_ok=True)


def melanoma_scores(melanoma: list[float], other: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (melanoma, then nevus) and probabilities whose P(melanoma) are the given scores."""
    label_indices = np.array(
        [MELANOMA_INDEX] * len(melanoma) + [LABELS.index("nevus")] * len(other)
    )
    probabilities = np.zeros((len(label_indices), len(LABELS)))
    probabilities[:, MELANOMA_INDEX] = melanoma + other
    probabilities[:, LABELS.index("nevus")] = 1 - probabilities[:, MELANOMA_INDEX]
    return label_indices, probabilities


def fitted_detector(model, familiar: np.ndarray, neighbours: int = 3, flagged: float = 0.1):
    """An unfamiliar-image detector of `model` at its pooled features, fitted and thresholded
    on uint8 images `familiar` (n, size, size, 3): the first half fits, the rest sets the
    threshold."""
    from melanoma.inference.unfamiliar import POOLED, fit_detector, probe

    _, features = probe(model, POOLED).predict_on_batch(familiar)
    half = len(familiar) // 2
    return fit_detector(features[:half], features[half:], POOLED, neighbours, flagged)


def drift_reference(model, images: np.ndarray):
    """The drift reference of `model` on uint8 images, as `train` keeps validation's."""
    from melanoma.inference.unfamiliar import POOLED, probe
    from melanoma.sites.drift import DriftReference

    probabilities, features = probe(model, POOLED).predict_on_batch(images)
    return DriftReference(melanoma=probabilities[:, MELANOMA_INDEX], features=features)


def noise_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n uint8 images of uniform noise, like the `image_bytes` fixture's: their mean colours
    are all near mid-grey."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def site_record(name: str, threshold: float):
    """A SiteRecord as `melanoma site calibrate` stores it, with made-up sample figures."""
    from melanoma.sites.record import SiteRecord

    return SiteRecord(
        name=name,
        threshold=threshold,
        images=200,
        melanomas=20,
        sample_sensitivity=0.95,
        sample_specificity=0.6,
        global_threshold=0.5,
        global_sensitivity=0.7,
        global_specificity=0.8,
        target_sensitivity=0.8,
        confidence=0.9,
        folder="/data/sample",
        calibrated_at="2026-12-07T10:00:00+00:00",
    )


MODEL_SIZE = 16  # input side of the tiny models: smaller than TINY_SIZE, so images get resized


def image_file_bytes(seed: int, size: tuple[int, int] = (16, 16), fmt: str = "JPEG") -> bytes:
    """The bytes of a random-pixel RGB image file (the image_bytes fixture's)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, fmt)
    return buffer.getvalue()


def build_tiny_classifier(probabilities: list[float] | None = None, size: int = MODEL_SIZE):
    """The model of the tiny_classifier fixture."""
    import keras

    inputs = keras.Input((size, size, 3), dtype="uint8")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(len(LABELS), activation="softmax")
    model = keras.Model(inputs, dense(features))
    if probabilities is None:
        kernel = np.random.default_rng(7).normal(0, 4, (3, len(LABELS)))
        bias = np.zeros(len(LABELS))
    else:
        kernel, bias = np.zeros((3, len(LABELS))), np.log(probabilities)
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def position_classifier(size: int = MODEL_SIZE):
    """A tiny classifier whose answer depends on where each pixel is (flattened pixels, one
    dense softmax): unlike build_tiny_classifier's pooling, it tells the views of an image
    apart (test-time views)."""
    import keras

    inputs = keras.Input((size, size, 3), dtype="uint8")
    pixels = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(len(LABELS), activation="softmax")
    model = keras.Model(inputs, dense(pixels))
    kernel = np.random.default_rng(11).normal(0, 0.5, (size * size * 3, len(LABELS)))
    dense.set_weights([kernel.astype("float32"), np.zeros(len(LABELS), "float32")])
    return model
