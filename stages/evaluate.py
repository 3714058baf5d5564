"""Score the trained model on the test split and every external set, choose the melanoma alert
threshold, log it all to its MLflow run, and register the model, promoting it to `champion` only
if it beats the current one, beyond noise, on the same images."""

import json
import logging
import tempfile
from functools import partial
from pathlib import Path

import keras
import mlflow
import numpy as np

from melanoma.config import Params, flatten, load_params
from melanoma.data.manifest import (
    AUGMENTED_COLUMNS,
    INGEST_COLUMNS,
    SOURCES_SUMMARY,
    file_sha256,
    read_manifest,
    read_sources_summary,
)
from melanoma.evaluation.explain import write_gallery
from melanoma.evaluation.external import FILE_COLUMNS, check_folder, read_external_set
from melanoma.evaluation.metrics import images_sha256, read_predictions
from melanoma.evaluation.model_card import (
    CardFacts,
    figures_table,
    read_json_or_empty,
    registry_description,
    render_card,
)
from melanoma.evaluation.report import (
    TEST,
    EvaluationSet,
    choose_operating_point,
    evaluation_report,
    external_set,
    test_set,
    threshold_rules,
    tracked_metrics,
)
from melanoma.logs import setup_logging
from melanoma.model.predict import predict_split
from melanoma.model.serving import log_served_model, serving_config
from melanoma.registry.promotion import (
    KEPT,
    PROMOTED,
    ScoredImages,
    champion_probabilities,
    read_run_info,
    register_and_decide,
    source_run,
    version_tags,
)
from melanoma.tracking import configure_tracking, git_commit

log = logging.getLogger(__name__)

MANIFEST = Path("data/augmented/manifest.csv")
INGESTED_MANIFEST = Path("data/ingested/manifest.csv")
MODEL_FILE = Path("models/model.keras")
RUN_FILE = Path("models/run.json")
VALIDATION_PREDICTIONS = Path("reports/validation_predictions.csv")
METRICS_FILE = Path("reports/metrics.json")
PREDICTIONS_FILE = Path("reports/predictions.csv")
EXTERNAL_DIR = Path("reports/external")
PLOTS_DIR = Path("reports/plots")
GALLERY_FILE = Path("reports/melanoma_gallery.png")
MODEL_CARD = Path("reports/model_card.md")
TRAIN_METRICS_FILE = Path("reports/train_metrics.json")
VALIDATION_REPORT = Path("reports/validation.json")
# The per-class figures and interval bounds of every set, one table (not metrics) in the run.
FIGURES_TABLE_ARTIFACT = "evaluation/figures.json"


def main() -> None:
    setup_logging()
    params = load_params()
    # Before any output is rewritten: a rewritten tracked report must not make the tree "dirty".
    commit = git_commit()
    evaluate = params.evaluate
    for index, external in enumerate(evaluate.external_sets):
        check_folder(external, index)  # a missing folder stops before any work
    run_info = read_run_info(RUN_FILE)
    temperature = float(run_info.get("temperature", 1.0))
    model = keras.saving.load_model(MODEL_FILE)

    # External images are ingested into a scratch folder that lives as long as they are read.
    with tempfile.TemporaryDirectory(prefix="external-") as scratch:
        sets = [
            test_set(read_manifest(MANIFEST, AUGMENTED_COLUMNS), MANIFEST),
            *external_sets(params, Path(scratch)),
        ]
        probabilities = {
            s.name: predict_split(model, s.paths, s.true, params.train.batch_size) for s in sets
        }
        validation = read_predictions(VALIDATION_PREDICTIONS)
        choice = choose_operating_point(
            evaluate.operating_point, evaluate.seed, validation, sets, probabilities
        )
        report, written = evaluation_report(
            sets, probabilities, choice, temperature, evaluate, predictions_file, PLOTS_DIR
        )
        report["threshold_rules"] = threshold_rules(
            evaluate.operating_point, evaluate.seed, validation, sets, probabilities
        )
        METRICS_FILE.write_text(json.dumps(report, indent=2) + "\n")
        test = sets[0]
        write_gallery(
            model,
            test.paths,
            test.true,
            probabilities[TEST],
            choice.threshold.value,
            GALLERY_FILE,
        )
        track_and_register(
            params,
            model,
            run_info,
            report,
            [METRICS_FILE, GALLERY_FILE, *written],
            sets,
            probabilities,
            commit,
        )


def external_sets(params: Params, scratch: Path) -> list[EvaluationSet]:
    """Each external set read (reports/external/<name>/files.csv accounts for its files)."""
    collection = read_manifest(INGESTED_MANIFEST, INGEST_COLUMNS)
    sets = []
    for external in params.evaluate.external_sets:
        images = read_external_set(external, params.ingest, collection, scratch / external.name)
        files = EXTERNAL_DIR / external.name / "files.csv"
        files.parent.mkdir(parents=True, exist_ok=True)
        images.files[FILE_COLUMNS].to_csv(files, index=False)
        sets.append(external_set(images))
    return sets


def predictions_file(set_name: str) -> Path:
    return PREDICTIONS_FILE if set_name == TEST else EXTERNAL_DIR / set_name / "predictions.csv"


def track_and_register(
    params: Params,
    model: keras.Model,
    run_info: dict,
    report: dict,
    artifacts: list[Path],
    sets: list[EvaluationSet],
    probabilities: dict[str, np.ndarray],
    commit: str,
) -> None:
    """Log the report to the training run; write the model card; log the served model (which
    carries the alert threshold) and register it with the card as its description; re-score the
    champion on the same images and move the alias if the new version is better beyond noise."""
    experiment_id = configure_tracking(params.mlflow)
    test = sets[0]
    run_id, model_uri = source_run(run_info, experiment_id, MODEL_FILE, test.paths[0])
    lineage = {
        "git commit": commit,
        "test images sha256": images_sha256(test.paths, test.true),
        "augmented manifest sha256": file_sha256(MANIFEST),
    }
    card = CardFacts(
        report=report,
        run_info=run_info | {"run_id": run_id, "model_uri": model_uri},
        params=flatten(params),
        lineage=lineage,
        training=read_json_or_empty(TRAIN_METRICS_FILE),
        validation=read_json_or_empty(VALIDATION_REPORT),
        images=read_manifest(MANIFEST, AUGMENTED_COLUMNS),
        sources=read_sources_summary(SOURCES_SUMMARY),
        model_name=params.registry.model_name,
    )
    MODEL_CARD.write_text(render_card(card))
    with mlflow.start_run(run_id=run_id):
        # Tags, not params: evaluate may run again on the same training run with other values.
        mlflow.set_tags(
            flatten(params.evaluate, "evaluate.")
            | flatten(params.registry, "registry.")
            | {"evaluate.warnings": "; ".join(report["warnings"]) or "none"}
        )
        mlflow.log_metrics(tracked_metrics(report))
        # log_dict, not log_table: log_table appends to an existing file, and evaluate may run
        # again on the same run. The content is log_table's: {"columns": [...], "data": [...]}.
        mlflow.log_dict(figures_table(report), FIGURES_TABLE_ARTIFACT)
        for path in [*artifacts, MODEL_CARD]:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        scored = ScoredImages(
            true=np.concatenate([s.true for s in sets]),
            probabilities=np.concatenate([probabilities[s.name] for s in sets]),
            sets=np.concatenate([[s.name] * len(s.true) for s in sets]),
        )
        threshold = report["operating_point"]["threshold"]
        served = log_served_model(model, serving_config(params, threshold), Path(test.paths[0]))
        version, decision = register_and_decide(
            served.model_uri,
            params.registry,
            registry_description(card),
            version_tags(
                report,
                run_id,
                lineage["test images sha256"],
                lineage["augmented manifest sha256"],
                lineage["git commit"],
            ),
            scored,
            partial(
                champion_probabilities,
                paths=[path for s in sets for path in s.paths],
                true=scored.true,
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
