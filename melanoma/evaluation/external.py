"""External evaluation sets: labelled image folders from outside the training collection.

A set is laid out `<class>/<image>`, class folders named as ingest accepts them. Every file is
accounted for in the set's file table, with one status:

    scored     decoded and scored
    rejected   ingest's rejection codes (melanoma.data.ingest), e.g. `unknown_class` for a folder
               outside the nine labels (counted per folder, not scored), `outside_class_folder`
               for a file beside the class folders (README, checksums)
    excluded   `in_training_collection`: the same pixels, or the same ISIC id, as an image of the
               training collection. Scoring it would flatter the model, so it is listed instead.

Images are decoded, cropped and resized by ingest's own `ingest_file` into a scratch folder, so
they reach the model exactly as training and test images do.
"""

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from melanoma.data import sources
from melanoma.data.ingest import OutputNames, ingest_file
from melanoma.data.manifest import ACCEPTED, INGEST_COLUMNS, REJECTED, read_manifest
from melanoma.errors import MelanomaError
from melanoma.labels import LABELS, canonical_label
from melanoma.params.data import IngestParams
from melanoma.params.evaluation import ExternalSet

log = logging.getLogger(__name__)

SCORED, EXCLUDED = "scored", "excluded"
IN_TRAINING_COLLECTION = "in_training_collection"
ISIC_ID = re.compile(r"ISIC_\d{7}")
SPLIT = "external"
# Columns of the set's file table in the reports (the scratch image paths are not kept).
FILE_COLUMNS = ["source_path", "label", "status", "reason", "detail"]


class ExternalSetError(MelanomaError, ValueError):
    """An external set cannot be read at all; the message names the param and the path."""


@dataclass(frozen=True)
class ExternalImages:
    """One external set: every file with its status, and the scored images."""

    name: str
    files: pd.DataFrame  # FILE_COLUMNS and image_path (scratch), one row per file of the folder

    @property
    def scored(self) -> pd.DataFrame:
        return self.files[self.files["status"] == SCORED]

    @property
    def paths(self) -> list[str]:
        return self.scored["image_path"].tolist()

    @property
    def source_paths(self) -> list[str]:
        return self.scored["source_path"].tolist()

    @property
    def label_indices(self) -> np.ndarray:
        return self.scored["label"].map(LABELS.index).to_numpy(dtype=np.int32)

    def accounting(self) -> dict:
        """Counts of the report: files, scored, rejected and excluded by reason, unknown folders."""
        files = self.files
        rejected = files[files["status"] == REJECTED]
        unknown = rejected[rejected["reason"] == sources.UNKNOWN_CLASS]
        return {
            "files": len(files),
            "scored": int((files["status"] == SCORED).sum()),
            "rejected": dict(sorted(Counter(rejected["reason"]).items())),
            "excluded": int((files["status"] == EXCLUDED).sum()),
            "unknown_class_folders": dict(
                sorted(Counter(p.split("/")[0] for p in unknown["source_path"]).items())
            ),
            "scored_per_label": dict(sorted(Counter(self.scored["label"]).items())),
        }


def check_folder(external: ExternalSet, index: int) -> None:
    """Stop before any work if the folder of `evaluate.external_sets[index]` is unusable."""
    name = f"evaluate.external_sets[{index}].path ({external.name})"
    where = f"{external.path} (resolved: {external.path.resolve()})"
    if not external.path.is_dir():
        raise ExternalSetError(f"{name}: {where} is not a directory")
    if not any(p.is_file() for p in external.path.rglob("*")):
        raise ExternalSetError(f"{name}: {where} holds no file")


def place(file: sources.SourceFile) -> sources.SourceFile:
    """The file's label from its class folder, or the reason it has none."""
    parts = file.path.split("/")
    if file.problem:
        return file
    if len(parts) != 2:
        return _problem(file, sources.OUTSIDE_CLASS_FOLDER, "not at <class>/<file>")
    label = canonical_label(parts[0])
    if label is None:
        detail = f"class folder '{parts[0]}' is not one of the nine labels: counted, not scored"
        return _problem(file, sources.UNKNOWN_CLASS, detail)
    return sources.SourceFile(file.path, file.size, split=SPLIT, label=label)


def _problem(file: sources.SourceFile, reason: str, detail: str) -> sources.SourceFile:
    return sources.SourceFile(file.path, file.size, split=SPLIT, problem=reason, detail=detail)


def read_external_set(
    external: ExternalSet,
    ingest_params: IngestParams,
    training_collection: pd.DataFrame,
    scratch: Path,
) -> ExternalImages:
    """Ingest every file of the set into `scratch`; exclude images of the training collection
    (an ingest manifest: its accepted rows)."""
    files = [place(f) for f in sources.walk_directory(external.path)]
    files.sort(key=lambda f: f.path)
    names = OutputNames()
    with sources.Source(external.path, files, None) as source:
        rows = [ingest_file(source, f, scratch / SPLIT, ingest_params, names) for f in files]
    ingested = pd.DataFrame(rows, columns=INGEST_COLUMNS)
    table = pd.DataFrame(
        {
            "source_path": ingested["source_path"],
            "label": ingested["label"],
            "status": ingested["status"].map({ACCEPTED: SCORED, REJECTED: REJECTED}),
            "reason": ingested["reason"],
            "detail": ingested["detail"],
            "image_path": ingested["image_path"],
        }
    )
    _exclude_training_images(table, ingested, training_collection)
    images = ExternalImages(external.name, table)
    counts = images.accounting()
    log.info(
        "external set %s (%s): %d files, %d scored, rejected %s, %d excluded as images of the "
        "training collection",
        external.name,
        external.path,
        counts["files"],
        counts["scored"],
        counts["rejected"] or "none",
        counts["excluded"],
    )
    return images


def read_external_sets(
    external_sets: list[ExternalSet],
    ingest_params: IngestParams,
    scratch: Path,
    ingested_manifest: Path,
) -> list[ExternalImages]:
    """Every set of `evaluate.external_sets`, checked against the ingested training collection
    (`ingested_manifest`, ingest's manifest), its images ingested into scratch/<set name>."""
    collection = read_manifest(ingested_manifest, INGEST_COLUMNS)
    return [
        read_external_set(external, ingest_params, collection, scratch / external.name)
        for external in external_sets
    ]


def _exclude_training_images(
    table: pd.DataFrame, ingested: pd.DataFrame, training_collection: pd.DataFrame
) -> None:
    """Mark, in place, every accepted image whose pixels or ISIC id the collection also has."""
    collection = training_collection[training_collection["status"] == ACCEPTED]
    by_pixels = dict(zip(collection["pixel_sha256"], collection["source_path"], strict=True))
    by_id: dict[str, str] = {}
    for source_path in collection["source_path"]:
        match = ISIC_ID.search(Path(source_path).name)
        if match:
            by_id.setdefault(match.group(), source_path)
    for row in np.flatnonzero(table["status"] == SCORED):
        pixels = ingested.at[row, "pixel_sha256"]
        isic_id = ISIC_ID.search(Path(table.at[row, "source_path"]).name)
        if pixels in by_pixels:
            detail = f"same pixels as {by_pixels[pixels]} of the training collection"
        elif isic_id and isic_id.group() in by_id:
            detail = f"same ISIC id as {by_id[isic_id.group()]} of the training collection"
        else:
            continue
        table.loc[row, ["status", "reason", "detail"]] = [EXCLUDED, IN_TRAINING_COLLECTION, detail]
        log.warning("%s: excluded, %s", table.at[row, "source_path"], detail)
