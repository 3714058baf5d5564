"""Stage `register`: log evaluate's outputs to the model's MLflow run, give the model its registry
version (the same one on every re-run) and decide whether it becomes `champion`.

Promotion re-scores the champion on evaluate's images; it moves the alias only if the new model is
better beyond noise (melanoma.registry.promotion)."""

import logging

from melanoma import paths
from melanoma.config import load_params
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import REGISTRATION_FILE
from melanoma.registry.registration import (
    EvaluatedFiles,
    register_evaluated_model,
    write_registration,
)
from melanoma.tracking import git_commit, runs_end_as_killed
from stages.evaluated import CARD_FILES, predictions_file

log = logging.getLogger("stages.register")


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    # Before any output is rewritten: a rewritten tracked report must not make the tree "dirty".
    commit = git_commit()
    with runs_end_as_killed():
        registration = register_evaluated_model(params, commit, evaluated_files())
    write_registration(registration, REGISTRATION_FILE)
    log.info(
        "%s v%s %s; %s",
        registration.model_name,
        registration.version,
        registration.decision,
        REGISTRATION_FILE,
    )


def evaluated_files() -> EvaluatedFiles:
    return EvaluatedFiles(
        run_file=paths.RUN_FILE,
        metrics_file=paths.METRICS_FILE,
        model_file=paths.MODEL_FILE,
        unfamiliar_file=paths.UNFAMILIAR_FILE,
        drift_reference_file=paths.DRIFT_REFERENCE_FILE,
        validation_predictions=paths.VALIDATION_PREDICTIONS,
        ingested_manifest=paths.INGESTED_MANIFEST,
        augmented_manifest=paths.AUGMENTED_MANIFEST,
        predictions=predictions_file,
        logged=(paths.METRICS_FILE, paths.PREDICTIONS_FILE, paths.GALLERY_FILE, paths.MODEL_CARD),
        plots_dir=paths.PLOTS_DIR,
        external_dir=paths.EXTERNAL_DIR,
        card=CARD_FILES,
    )


if __name__ == "__main__":
    main()
