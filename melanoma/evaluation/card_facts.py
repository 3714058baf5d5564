"""What the model card is written from (`CardFacts`), and reading it from the files the
pipeline wrote (`card_facts`: the stage names the files)."""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from melanoma.config import Params, flatten
from melanoma.data.manifest import AUGMENTED_COLUMNS, read_manifest
from melanoma.evaluation.report import Lineage
from melanoma.reports import MetricsReport, RunInfo, TrainMetrics, ValidationReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardFacts:
    """What the card is written from. Only `report`, `run_info` and `params` are required; a
    fact that is None is unknown."""

    report: MetricsReport  # reports/metrics.json
    run_info: RunInfo  # models/run.json, with the run id the evaluation is logged into
    params: dict[str, object]  # flattened params (melanoma.config.flatten)
    lineage: Lineage | None = None  # git commit, data hashes
    training: TrainMetrics | None = None  # reports/train_metrics.json
    validation: ValidationReport | None = None  # reports/validation.json
    # data/augmented/manifest.csv (source, label, split, source_image_id, augmented)
    images: pd.DataFrame | None = None
    sources: list[dict] = field(default_factory=list)  # data/ingested/sources.json
    model_name: str = ""


@dataclass(frozen=True)
class CardFiles:
    """The files the card's facts beyond the evaluation are read from (the stage names them)."""

    train_metrics: Path  # train's metrics (read if present)
    validation_report: Path  # validate's report (read if present)
    augmented_manifest: Path  # augment's manifest
    sources_summary: Path  # ingest's sources summary (read if readable)


def card_facts(
    params: Params, report: MetricsReport, run_info: RunInfo, lineage: Lineage, files: CardFiles
) -> CardFacts:
    """The facts of the evaluated model, read from the files the pipeline wrote. Raises
    melanoma.reports.ReportError if a report is there but not as its stage writes it."""
    return CardFacts(
        report=report,
        run_info=run_info,
        params=flatten(params),
        lineage=lineage,
        training=TrainMetrics.read_if_present(files.train_metrics),
        validation=ValidationReport.read_if_present(files.validation_report),
        images=read_manifest(files.augmented_manifest, AUGMENTED_COLUMNS),
        sources=read_sources_or_empty(files.sources_summary),
        model_name=params.registry.model_name,
    )


def read_sources_or_empty(path: Path) -> list[dict]:
    """data/ingested/sources.json, or [] (with a warning) if it is absent or unreadable: the
    card then says the sources are unknown instead of failing the stage."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("model card: %s not read (%s): its facts are left out", path, error)
        return []
