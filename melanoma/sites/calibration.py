"""`melanoma site calibrate`: score a site's labelled sample with a version and choose its
threshold (melanoma.sites.operating_point).

The sample is laid out as the external sets are, `<class>/<image>`, and read by the same code
(melanoma.evaluation.external): every file is decoded, cropped and resized as ingest does it,
and an image of the training collection is excluded, not scored. Unlike an external set, a
sample with any unusable image is refused as a whole, naming the files: a threshold chosen
without them would not be the one the clinic labelled for. Files beside the class folders
(README, checksums, a labels table) are ignored.

The same pass gives the version's features (those of its unfamiliar-image detector), on which
the site head is fitted and gated (melanoma.sites.head). Where it is adopted, the threshold is
chosen on the head's out-of-fold scores (at a stricter confidence: `head_threshold`) and the
sample's figures are theirs.
"""

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from melanoma.config import Params
from melanoma.data.manifest import INGEST_COLUMNS, REJECTED, read_manifest
from melanoma.data.sources import OUTSIDE_CLASS_FOLDER
from melanoma.evaluation.external import read_external_set
from melanoma.inference.predict import predict_files
from melanoma.inference.unfamiliar import UnfamiliarDetector
from melanoma.labels import MELANOMA
from melanoma.params.data import IngestParams
from melanoma.params.evaluation import ExternalSet
from melanoma.sites.head import FeatureIdentity, SiteHead, decide_head, head_threshold
from melanoma.sites.operating_point import SiteSampleError, choose_site_threshold
from melanoma.sites.record import SiteRecord

log = logging.getLogger(__name__)

MAX_PROBLEMS_LISTED = 10


@dataclass(frozen=True)
class SiteCalibration:
    record: SiteRecord
    head: SiteHead | None  # the adopted head, fitted on the whole sample


def read_site_sample(
    name: str, folder: Path, ingest: IngestParams, scratch: Path, ingested_manifest: Path
) -> pd.DataFrame:
    """The scored images of the sample (image_path in scratch, label), every file accounted
    for, checked against the training collection (`ingested_manifest`, if it is there);
    SiteSampleError naming the unusable files, or the folder if it holds no class layout."""
    if not folder.is_dir():
        raise SiteSampleError(f"{folder}: not a folder (a labelled sample: <class>/<image>)")
    collection = (
        read_manifest(ingested_manifest, INGEST_COLUMNS)
        if ingested_manifest.exists()
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
    model: keras.Model,
    detector: UnfamiliarDetector | None,
    name: str,
    folder: Path,
    global_threshold: float,
    params: Params,
    ingested_manifest: Path,
) -> SiteCalibration:
    """The site's record (what `site calibrate` stores) from its labelled sample, with what
    the version's global threshold gives on the same sample, and its head if adopted; the
    sample is read against the training collection (`ingested_manifest`, as `read_site_sample`)."""
    with tempfile.TemporaryDirectory(prefix="site-") as scratch:
        scored = read_site_sample(name, folder, params.ingest, Path(scratch), ingested_manifest)
        paths = [Path(p) for p in scored["image_path"]]
        predictions = predict_files(
            model, paths, params.ingest.image_size, params.ingest.max_image_pixels, detector
        )
    scores = np.array([p.melanoma_probability for p in predictions])
    is_melanoma = scored["label"].to_numpy() == MELANOMA
    # The model's own threshold first: it refuses a sample that cannot support the promise.
    chosen = choose_site_threshold(is_melanoma, scores, params.sites)
    features, identity = None, None
    if detector is not None:
        features = np.stack([p.answered_features for p in predictions])
        identity = FeatureIdentity.of(detector)
    decision = decide_head(features, scores, is_melanoma, identity, params.sites)
    log.info(
        "site %s: head %s: %s",
        name,
        "adopted" if decision.adopted else "not adopted",
        decision.reason,
    )
    if decision.out_of_fold is not None:  # adopted
        chosen = head_threshold(is_melanoma, decision.out_of_fold, params.sites)
    global_alerts = scores >= global_threshold
    record = SiteRecord(
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
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        head_adopted=decision.adopted,
        head_reason=decision.reason,
        model_auc=decision.model_auc,
        head_auc=decision.head_auc,
    )
    return SiteCalibration(record, decision.head)
