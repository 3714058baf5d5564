"""`melanoma site calibrate`: score a site's labelled sample with a version and choose its
threshold (melanoma.sites.operating_point).

The sample is laid out as the external sets are, `<class>/<image>`, and read by the same code
(melanoma.evaluation.external): every file is decoded, cropped and resized as ingest does it,
and an image of the training collection is excluded, not scored. Unlike an external set, a
sample with any unusable image is refused as a whole, naming the files: a threshold chosen
without them would not be the one the clinic labelled for. Files beside the class folders
(README, checksums, a labels table) are ignored.
"""

import tempfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from melanoma.config import Params
from melanoma.data.manifest import INGEST_COLUMNS, REJECTED, read_manifest
from melanoma.data.sources import OUTSIDE_CLASS_FOLDER
from melanoma.evaluation.external import read_external_set
from melanoma.labels import MELANOMA
from melanoma.model.predict import predict_files
from melanoma.params.data import IngestParams
from melanoma.params.evaluation import ExternalSet
from melanoma.paths import INGESTED_MANIFEST
from melanoma.sites.operating_point import SiteSampleError, choose_site_threshold
from melanoma.sites.registry import SiteRecord, now

MAX_PROBLEMS_LISTED = 10


def read_site_sample(name: str, folder: Path, ingest: IngestParams, scratch: Path) -> pd.DataFrame:
    """The scored images of the sample (image_path in scratch, label), every file accounted
    for; SiteSampleError naming the unusable files, or the folder if it holds no class layout."""
    if not folder.is_dir():
        raise SiteSampleError(f"{folder}: not a folder (a labelled sample: <class>/<image>)")
    collection = (
        read_manifest(INGESTED_MANIFEST, INGEST_COLUMNS)
        if INGESTED_MANIFEST.exists()
        else pd.DataFrame(columns=INGEST_COLUMNS)
    )
    files = read_external_set(
        ExternalSet(name=name, path=folder), ingest, collection, scratch
    ).files
    unusable = files[(files["status"] == REJECTED) & (files["reason"] != OUTSIDE_CLASS_FOLDER)]
    if len(unusable):
        listed = "; ".join(
            f"{row.source_path}: {row.detail} ({row.reason})"
            for row in unusable.head(MAX_PROBLEMS_LISTED).itertuples()
        )
        raise SiteSampleError(f"{len(unusable)} files of {folder} cannot be used: {listed}")
    scored = files[files["status"] == "scored"]
    if scored.empty:
        raise SiteSampleError(
            f"{folder} holds no image in a class folder: a sample is laid out <class>/<image>, "
            "class folders named like the nine labels (melanoma, nevus, ...)"
        )
    return scored


def calibrate_site(
    model: keras.Model, name: str, folder: Path, global_threshold: float, params: Params
) -> SiteRecord:
    """The site's record (what `site calibrate` stores) from its labelled sample, with what
    the version's global threshold gives on the same sample."""
    with tempfile.TemporaryDirectory(prefix="site-") as scratch:
        scored = read_site_sample(name, folder, params.ingest, Path(scratch))
        paths = [Path(p) for p in scored["image_path"]]
        predictions = predict_files(
            model, paths, params.ingest.image_size, params.ingest.max_image_pixels
        )
    scores = np.array([p.melanoma_probability for p in predictions])
    is_melanoma = scored["label"].to_numpy() == MELANOMA
    chosen = choose_site_threshold(is_melanoma, scores, params.sites)
    global_alerts = scores >= global_threshold
    return SiteRecord(
        name=name,
        threshold=chosen.threshold,
        images=chosen.images,
        melanomas=chosen.melanomas,
        sample_sensitivity=chosen.sample_sensitivity,
        sample_specificity=chosen.sample_specificity,
        global_threshold=global_threshold,
        global_sensitivity=float(global_alerts[is_melanoma].mean()),
        global_specificity=float((~global_alerts[~is_melanoma]).mean()),
        target_sensitivity=params.sites.target_sensitivity,
        confidence=params.sites.confidence,
        folder=str(folder.resolve()),
        calibrated_at=now(),
    )
