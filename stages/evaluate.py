"""Stage `evaluate`: score the trained model on the test split and every external set, choose the
melanoma alert threshold, and write the figures, plots and model card. Nothing here talks to
MLflow: stage `register` logs these outputs and registers the model, so a tracking server that
is down fails registration, not evaluation.

Every set is scored by the trained model with `predict.views` test-time views
(melanoma.inference.views), the graph `register` logs as the served model; with more than one view
the validation split is scored again by it, so that the threshold is chosen on the same
averaged scores (with one, train's validation predictions are those scores)."""

import logging
import tempfile
from pathlib import Path

import keras

from melanoma.config import load_params
from melanoma.evaluation.card_facts import card_facts
from melanoma.evaluation.explain import write_gallery
from melanoma.evaluation.external import (
    FILE_COLUMNS,
    check_folder,
    read_external_sets,
)
from melanoma.evaluation.model_card import render_card
from melanoma.evaluation.report import (
    TEST,
    choose_operating_point,
    evaluation_lineage,
    evaluation_report,
    evaluation_sets,
    threshold_rules,
    validation_scores,
)
from melanoma.inference.predict import predict_split
from melanoma.inference.views import trained_model, with_views
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import (
    AUGMENTED_MANIFEST,
    GALLERY_FILE,
    INGESTED_MANIFEST,
    METRICS_FILE,
    MODEL_CARD,
    MODEL_FILE,
    PLOTS_DIR,
    RUN_FILE,
    VALIDATION_PREDICTIONS,
    external_files,
)
from melanoma.reports import RunInfo
from melanoma.tracking import git_commit
from stages.evaluated import CARD_FILES, predictions_file

log = logging.getLogger("stages.evaluate")


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    # Before any output is rewritten: a rewritten tracked report must not make the tree "dirty".
    commit = git_commit()
    evaluate = params.evaluate
    for index, external_set in enumerate(evaluate.external_sets):
        check_folder(external_set, index)  # a missing folder stops before any work
    run_info = RunInfo.read(RUN_FILE)
    model = with_views(keras.saving.load_model(MODEL_FILE), params.predict.views)

    # External images are ingested into a scratch folder that lives as long as they are read.
    with tempfile.TemporaryDirectory(prefix="external-") as scratch:
        external = read_external_sets(
            evaluate.external_sets, params.ingest, Path(scratch), INGESTED_MANIFEST
        )
        for images in external:
            files = external_files(images.name)
            files.parent.mkdir(parents=True, exist_ok=True)
            images.files[FILE_COLUMNS].to_csv(files, index=False)
        sets = evaluation_sets(external, AUGMENTED_MANIFEST)
        probabilities = {
            s.name: predict_split(model, s.paths, s.label_indices, params.train.batch_size)
            for s in sets
        }
        validation = validation_scores(model, VALIDATION_PREDICTIONS, params.train.batch_size)
        choice = choose_operating_point(
            evaluate.operating_point, evaluate.seed, validation, sets, probabilities
        )
        rules = threshold_rules(
            evaluate.operating_point, evaluate.seed, validation, sets, probabilities
        )
        report = evaluation_report(
            sets,
            probabilities,
            choice,
            run_info.temperature,
            evaluate,
            rules,
            predictions_file,
            PLOTS_DIR,
        )
        report.write(METRICS_FILE)
        test = sets[0]
        write_gallery(
            trained_model(model),  # Grad-CAM of the image itself
            test.paths,
            test.label_indices,
            probabilities[TEST],
            choice.threshold.value,
            GALLERY_FILE,
        )
    lineage = evaluation_lineage(commit, test, AUGMENTED_MANIFEST)
    facts = card_facts(params, report, run_info, lineage, CARD_FILES)
    MODEL_CARD.write_text(render_card(facts))
    log.info("wrote %s and %s", METRICS_FILE, MODEL_CARD)


if __name__ == "__main__":
    main()
