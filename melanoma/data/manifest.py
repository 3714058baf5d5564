"""The manifests that pass images from stage to stage: one CSV row per image.

Paths inside a manifest are POSIX paths relative to the project root (the directory the
stages run in), so a manifest stays valid when the project is cloned elsewhere.
"""

import hashlib
from pathlib import Path

import pandas as pd

# data/ingested/manifest.csv: one row per source file, accepted or rejected.
INGEST_COLUMNS = [
    "image_id",  # file stem, e.g. ISIC_0000043
    "split",  # train | test (from the Train/Test folder), empty if unknown
    "label",  # canonical label (melanoma.labels.LABELS), empty if unknown
    "source_path",  # relative to the source root (directory) or the zip member name
    "source_format",  # as Pillow reports it: JPEG, PNG, ...
    "source_mode",  # RGB, L, RGBA, CMYK, P, I;16, ...
    "source_width",
    "source_height",
    "source_bytes",
    "file_sha256",  # hash of the source file's bytes
    "pixel_sha256",  # hash of the decoded RGB pixels: equal pixels <=> equal hash
    "image_path",  # the canonical image written, empty if rejected
    "width",  # of the written image
    "height",
    "channels",
    "status",  # accepted | rejected
    "reason",  # short rejection code, empty if accepted
    "detail",  # human-readable explanation of the rejection
]
ACCEPTED, REJECTED = "accepted", "rejected"

# data/validated/manifest.csv adds the validate stage's decision for every row. There `label`
# is the label used, which the reference may have changed; the folder's stays in folder_label.
VALIDATED_COLUMNS = [
    *INGEST_COLUMNS,
    "decision",  # use | drop
    "decision_reason",  # why dropped: label_conflict, leak, duplicate, ingest:<reason>, ...
    "duplicate_group",  # the pixel hash shared with other images, empty if none
    "folder_label",  # the label of the class folder (ingest's label)
    "label_source",  # folder | reference: where `label` came from (empty if rejected at ingest)
    "reference_class",  # the class ISIC's ground truth gives the image, empty if none
    "reference_check",  # agrees | disagrees | not_in_reference | no_isic_id | ambiguous_id | off
]
USE, DROP = "use", "drop"

# data/augmented/manifest.csv: every image the model sees, with its lineage.
AUGMENTED_COLUMNS = [
    "image_path",
    "label",
    "split",  # train | val | test
    "source_image_id",
    "source_image_path",  # the validated image it was made from (itself if not augmented)
    "augmented",  # True for generated images
]


def write_manifest(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    df[columns].to_csv(path, index=False)


def read_manifest(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} does not exist: run the stage that writes it first"
        )
    # Everything as text first so that ids like "0012" and empty fields survive the round trip.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}")
    return df


def file_sha256(path: Path) -> str:
    """Content hash of a file, for tagging runs with the data they saw."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
