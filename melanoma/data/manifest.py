"""The manifests that pass images from stage to stage: one CSV row per image.

Paths inside a manifest are POSIX paths relative to the project root (the directory the
stages run in), so a manifest stays valid when the project is cloned elsewhere.
"""

import hashlib
import json
from pathlib import Path

import pandas as pd

# data/ingested/manifest.csv: one row per source file, accepted or rejected.
INGEST_COLUMNS = [
    "source",  # the data source's name (params.yaml data.sources)
    "image_id",  # file stem, e.g. ISIC_0000043
    "split",  # train | test (from the Train/Test folder), empty if unknown
    "label",  # canonical label (melanoma.labels.LABELS), empty if unknown
    "source_path",  # relative to the source root (directory) or the zip member name
    "lesion_id",  # the lesion photographed, where the source says (empty if it does not)
    "source_format",  # as Pillow reports it: JPEG, PNG, ...
    "source_mode",  # RGB, L, RGBA, CMYK, P, I;16, ...
    "source_width",
    "source_height",
    "source_bytes",
    "file_sha256",  # hash of the source file's bytes
    "pixel_sha256",  # hash of the decoded RGB pixels: equal pixels <=> equal hash
    "perceptual_hash",  # pHash (64 bits, hex) of the canonical image: near copies are close
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
    # copies, one lesion's images, near-duplicates (melanoma.data.groups): one side of a split
    "group",
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
    "source",  # the data source of the original image
    "source_image_id",
    "source_image_path",  # the validated image it was made from (itself if not augmented)
    "augmented",  # True for generated images
]


def read_sources_summary(path: Path) -> list[dict]:
    """data/ingested/sources.json: per data source, its params, file counts and content hash."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the ingest stage first")
    return json.loads(path.read_text())


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


def is_augmented_copy(manifest: pd.DataFrame) -> pd.Series:
    """Which rows of an augmented manifest are augmented copies (the column is read back from
    CSV as text or as booleans)."""
    return manifest["augmented"].astype(str).str.lower().eq("true")


def images_per_source(augmented: pd.DataFrame) -> pd.DataFrame:
    """Images the model sees per source and label (rows) and split (train, val, test), with
    the augmented copies added to train: the provenance the runs and the model card give."""
    copy = is_augmented_copy(augmented)
    counts = augmented[~copy].pivot_table(
        index=["source", "label"], columns="split", aggfunc="size", fill_value=0
    )
    counts = counts.reindex(columns=["train", "val", "test"], fill_value=0)
    copies = augmented[copy].groupby(["source", "label"]).size()
    counts["train_augmented_copies"] = copies.reindex(counts.index, fill_value=0)
    return counts.astype(int)
