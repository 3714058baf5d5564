"""What `evaluate` writes and `register` reads back, named once for both stages: each evaluation
set's predictions file and the files the model card is written from."""

from pathlib import Path

from melanoma import paths
from melanoma.evaluation.card_facts import CardFiles
from melanoma.evaluation.report import TEST

CARD_FILES = CardFiles(
    train_metrics=paths.TRAIN_METRICS,
    validation_report=paths.VALIDATION_REPORT,
    augmented_manifest=paths.AUGMENTED_MANIFEST,
    sources_summary=paths.SOURCES_SUMMARY,
)


def predictions_file(set_name: str) -> Path:
    """The predictions file of the evaluation set `set_name` (the test split's or an external
    set's)."""
    return paths.predictions_file(set_name, TEST)
