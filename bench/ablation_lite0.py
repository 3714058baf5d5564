"""EfficientNet-Lite0 configurations measured on the validation split and on the
shared external set (never the test split).

Run from the project root after `dvc repro augment` (it reads data/augmented):

    python -m bench.ablation_lite0 lite0_frozen_180 lite0_frozen_180_lr01 ...

Each configuration is params.yaml plus its overrides (CONFIGS). It trains with the pipeline's
own code (melanoma.model.features, melanoma.training) into bench/results/lite0/<name>/,
MLflow in a store of its own there, then predicts the external set with the project's predict
path. One JSON line per configuration is appended to bench/results/lite0/results.jsonl.
"""

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.project import project_external_set
from melanoma.config import PARAMS_FILE, parse_params
from melanoma.labels import LABELS
from melanoma.logs import setup_logging
from melanoma.paths import (
    AUGMENTED_MANIFEST,
    FEATURE_STORE_DIR,
    SOURCES_SUMMARY,
    TRAIN_OUTPUTS,
)

log = logging.getLogger(__name__)

RESULTS = Path("bench/results/lite0")
_FROZEN = {"architecture": "efficientnet_lite0", "freeze": "all", "random_flip": False}
CONFIGS: dict[str, dict] = {
    "lite0_frozen_180": {**_FROZEN, "image_size": 180},
    "lite0_frozen_180_lr01": {**_FROZEN, "image_size": 180, "learning_rate": 0.01},
    "lite0_frozen_128": {**_FROZEN, "image_size": 128},
    "lite0_top3_128": {
        "architecture": "efficientnet_lite0",
        "image_size": 128,
        "freeze": 3,
        "backbone_learning_rate": 0.0001,
        "epochs": 5,
    },
    "lite0_full_128": {
        "architecture": "efficientnet_lite0",
        "image_size": 128,
        "freeze": "none",
        "backbone_learning_rate": 0.0001,
        "epochs": 5,
    },
    "lite0_scratch_128": {
        "architecture": "efficientnet_lite0",
        "image_size": 128,
        "pretrained": False,
        "epochs": 5,
    },
    "lite0_full_180": {
        "architecture": "efficientnet_lite0",
        "image_size": 180,
        "freeze": "none",
        "backbone_learning_rate": 0.0001,
        "epochs": 8,
    },
    "lite0_top3_180": {
        "architecture": "efficientnet_lite0",
        "image_size": 180,
        "freeze": 3,
        "backbone_learning_rate": 0.0001,
        "epochs": 8,
    },
    "resnet_default": {},
}


def external_set() -> tuple[list[Path], np.ndarray]:
    """The shared external images and their label indices (labels.csv, folder names as LABELS
    with spaces)."""
    folder = project_external_set("isic2018")
    table = pd.read_csv(folder / "labels.csv")
    labels = table["label"].str.replace(" ", "_").map(LABELS.index).to_numpy()
    return [folder / f for f in table["file"]], labels


def old_archive_auc(predictions: pd.DataFrame) -> float:
    """Melanoma-vs-rest AUC on the validation images of the oldest archive (ISIC ids < 1000:
    melanomas and nevi only, the test split's mix; bench/ABLATION.md says why)."""
    from sklearn.metrics import roc_auc_score

    from melanoma.labels import MELANOMA
    from melanoma.metrics import probability_column

    ids = predictions["image_path"].str.extract(r"ISIC_(\d+)")[0].astype(int)
    old = predictions[ids < 1000]
    return float(roc_auc_score(old["label"] == MELANOMA, old[probability_column(MELANOMA)]))


def run(name: str) -> dict:
    import keras

    from melanoma.inference.predict import predict_files
    from melanoma.metrics import validation_metrics
    from melanoma.model.features import write_feature_cache
    from melanoma.reports import TrainMetrics
    from melanoma.training.run import TrainOutputs, run_training

    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["train"].update(CONFIGS[name])
    params = parse_params(raw)
    out = RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(RESULTS / 'mlflow.db').resolve()}"
    started = time.perf_counter()
    features_seconds = 0.0
    if params.train.caches_features:
        # One cache per input size, as DVC's run cache would keep them.
        features_dir = RESULTS / f"features_{params.train.image_size}"
        if not (features_dir / "features.npz").is_file():
            write_feature_cache(
                params.train, params.preprocess, AUGMENTED_MANIFEST, features_dir, FEATURE_STORE_DIR
            )
            features_seconds = time.perf_counter() - started
    else:
        features_dir = RESULTS / "unused"
    outputs = TrainOutputs(**{k: out / v.name for k, v in TRAIN_OUTPUTS.items()})
    run_training(params, AUGMENTED_MANIFEST, outputs, features_dir, SOURCES_SUMMARY)
    train_seconds = time.perf_counter() - started
    metrics = TrainMetrics.read(outputs.metrics)

    model = keras.saving.load_model(outputs.model)
    paths, labels = external_set()
    predicted = predict_files(
        model, paths, params.ingest.image_size, params.ingest.max_image_pixels
    )
    probabilities = np.array(
        [[p.answered_probabilities[label] for label in LABELS] for p in predicted]
    )
    val_predictions = pd.read_csv(outputs.validation_predictions)
    row = {
        "name": name,
        "old_archive_validation_melanoma_auc": old_archive_auc(val_predictions),
        "overrides": CONFIGS[name],
        "validation": metrics.validation.to_dict(),
        "external": validation_metrics(labels, probabilities),
        "external_images": len(paths),
        "epochs": metrics.epochs_run,
        "seconds_per_epoch": metrics.seconds_per_epoch,
        "images_per_second": metrics.images_per_second,
        "features_seconds": features_seconds,
        "stage_seconds": train_seconds,
    }
    with open(RESULTS / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s", json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(CONFIGS))
    setup_logging()
    for name in parser.parse_args().names:
        run(name)


if __name__ == "__main__":
    main()
