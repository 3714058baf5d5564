"""Score the trained model on the held-out test split, log it all to its MLflow run, and
register it, promoting it to `champion` if it beats the current one on the same test data."""

import json
import logging
from functools import partial
from pathlib import Path

import keras
import mlflow

from melanoma.config import flatten, load_params
from melanoma.dataset import split_rows
from melanoma.explain import write_gallery
from melanoma.logs import setup_logging
from melanoma.manifest import AUGMENTED_COLUMNS, file_sha256, read_manifest
from melanoma.metrics import (
    HEADLINE_METRICS,
    images_sha256,
    metrics_report,
    plot_confusion_matrix,
    plot_melanoma_roc,
    predictions_table,
)
from melanoma.predict import predict_split
from melanoma.registry import (
    KEPT,
    PROMOTED,
    read_run_info,
    register_and_decide,
    score_model,
    source_run,
    version_description,
    version_tags,
)
from melanoma.tracking import configure_tracking, git_commit

log = logging.getLogger(__name__)

MANIFEST = Path("data/augmented/manifest.csv")
MODEL_FILE = Path("models/model.keras")
RUN_FILE = Path("models/run.json")
METRICS_FILE = Path("reports/metrics.json")
PREDICTIONS_FILE = Path("reports/predictions.csv")
CONFUSION_FILE = Path("reports/confusion_matrix.png")
ROC_FILE = Path("reports/roc_curve.png")
GALLERY_FILE = Path("reports/melanoma_gallery.png")


def main() -> None:
    setup_logging()
    params = load_params()
    threshold, metric = params.evaluate.melanoma_threshold, params.registry.primary_metric
    run_info = read_run_info(RUN_FILE)
    paths, true = split_rows(read_manifest(MANIFEST, AUGMENTED_COLUMNS), "test", MANIFEST)
    model = keras.saving.load_model(MODEL_FILE)
    probabilities = predict_split(model, paths, true, params.train.batch_size)

    report = metrics_report(
        true, probabilities, threshold, params.evaluate.bootstrap_samples, params.evaluate.seed
    )
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    predictions_table(paths, true, probabilities, threshold).to_csv(PREDICTIONS_FILE, index=False)
    plot_confusion_matrix(true, probabilities, CONFUSION_FILE)
    plot_melanoma_roc(true, probabilities, threshold, ROC_FILE)
    write_gallery(model, paths, true, probabilities, threshold, GALLERY_FILE)
    log.info(
        "test split, %d images: %s",
        len(paths),
        ", ".join(
            f"{name} {'undefined' if report[name] is None else f'{report[name]:.3f}'}"
            for name in HEADLINE_METRICS
        ),
    )

    experiment_id = configure_tracking(params.mlflow)
    run_id, model_uri = source_run(run_info, experiment_id, MODEL_FILE, paths[0])
    with mlflow.start_run(run_id=run_id):
        # Tags, not params: evaluate may run again on the same training run with other values.
        mlflow.set_tags(
            flatten(params.evaluate, "evaluate.") | flatten(params.registry, "registry.")
        )
        mlflow.log_metrics(
            {f"test_{name}": value for name, value in report.items() if value is not None}
        )
        for path in (METRICS_FILE, PREDICTIONS_FILE, CONFUSION_FILE, ROC_FILE, GALLERY_FILE):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        version, decision = register_and_decide(
            model_uri,
            params.registry,
            report[metric],
            version_description(report, run_id, run_info["image_size"]),
            version_tags(
                report, run_id, images_sha256(paths, true), file_sha256(MANIFEST), git_commit()
            ),
            partial(
                score_model,
                paths=paths,
                true=true,
                threshold=threshold,
                metric=metric,
                batch_size=params.train.batch_size,
            ),
        )
        mlflow.set_tags(
            {
                "registry.version": version,
                "registry.decision": PROMOTED if decision.promote else KEPT,
                "registry.reason": decision.reason,
            }
        )


if __name__ == "__main__":
    main()
