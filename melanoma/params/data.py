"""The data sections of `params.yaml`: where the images come from (`data`), and how `ingest`,
`validate` and `augment` treat them."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from melanoma.labels import LABELS
from melanoma.params.base import _Section

# A source's name prefixes its image folder and MLflow params: lower case, digits, underscores.
SOURCE_NAME = r"^[a-z][a-z0-9_]*$"


class FolderSource(_Section):
    """Images laid out `<split>/<class>/<file>` (Train/Test), a directory or its .zip archive."""

    name: str = Field(pattern=SOURCE_NAME, description="names the source in manifests and runs")
    kind: Literal["folders"]
    path: Path


class TablePart(_Section):
    """One image folder and the CSV that labels it (ISIC 2017 publishes one per split)."""

    images: Path = Field(
        Path("."), description="the image folder within path; files named <image id>.<suffix>"
    )
    table: Path = Field(description="the CSV file within path, one row per image")
    split: Literal["train", "test"] | None = Field(None, description="null: the source's split")


class TableSource(_Section):
    """Image folders and CSV tables that label them, as ISIC publishes its sets.

    The label is either one column whose values `labels` maps onto the nine labels
    (HAM10000's `dx`), or one-hot columns that `labels` maps (ISIC's `image,MEL,NV,...`;
    ISIC 2017's `melanoma,seborrheic_keratosis`, where a row marking neither is a nevus:
    `unmarked_label`). The lesion id is a column of the table or, as ISIC 2019 publishes it,
    of a `metadata` CSV joined by image id. One folder and table (`images`, `table`), or
    several (`parts`). A source without a split of its own is training data.
    """

    name: str = Field(pattern=SOURCE_NAME, description="names the source in manifests and runs")
    kind: Literal["table"]
    path: Path = Field(description="the source's folder: its images and its tables")
    images: Path = Field(
        Path("."), description="the image folder within path; files named <image id>.<suffix>"
    )
    table: Path | None = Field(None, description="the CSV file within path, one row per image")
    parts: list[TablePart] = Field(
        default_factory=list, description="several image folders, each with its own table"
    )
    id_column: str = Field(min_length=1, description="the image id: the file name without suffix")
    label_column: str | None = Field(None, description="a column of label values; null: one-hot")
    labels: dict[str, str] = Field(
        min_length=1,
        description="label value (or one-hot column) -> one of the nine labels",
    )
    unmarked_label: str | None = Field(
        None, description="one-hot tables: the label of a row that marks no column"
    )
    lesion_column: str | None = Field(None, description="the lesion id: images of one lesion")
    metadata: Path | None = Field(
        None, description="a CSV within path holding lesion_column, joined by id_column"
    )
    split: Literal["train", "test"] = "train"

    @field_validator("labels")
    @classmethod
    def _onto_the_nine(cls, labels: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(labels.values()) - set(LABELS))
        if unknown:
            raise ValueError(f"{unknown} are not among the nine labels {list(LABELS)}")
        return labels

    @model_validator(mode="after")
    def _one_layout(self) -> "TableSource":
        if (self.table is None) == (not self.parts):
            raise ValueError("give either `table` (with `images`) or `parts`, not both")
        if self.parts and self.images != Path("."):
            raise ValueError("`images` belongs in each of `parts`")
        if self.unmarked_label is not None:
            if self.label_column is not None:
                raise ValueError("unmarked_label is for one-hot tables (label_column: null)")
            if self.unmarked_label not in LABELS:
                raise ValueError(
                    f"unmarked_label {self.unmarked_label!r} is not among the nine labels"
                )
        if self.metadata is not None and self.lesion_column is None:
            raise ValueError("metadata is read for lesion_column: name it")
        return self

    @property
    def layout(self) -> list[TablePart]:
        """Each image folder with its table and split."""
        parts = self.parts or [TablePart(images=self.images, table=self.table)]
        return [part.model_copy(update={"split": part.split or self.split}) for part in parts]


DataSource = Annotated[FolderSource | TableSource, Field(discriminator="kind")]


class DataParams(_Section):
    sources: list[DataSource] = Field(min_length=1, description="where the images come from")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list) -> list:
        # Whether the paths exist is checked by ingest, the one stage that reads them.
        names = [s.name for s in sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source name(s) {twice} used twice: each source needs its own")
        return sources


class IngestParams(_Section):
    image_size: int = Field(ge=32, le=1024, description="side of the square images written")
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_image_pixels: int = Field(
        50_000_000, ge=1_000_000, description="larger images are refused as decompression bombs"
    )


# The shared reference's README: ISIC 2019 ground-truth columns for the nine folder labels.
# BKL covers both keratoses, so the reference cannot tell those two apart.
DEFAULT_REFERENCE_CLASSES = {
    "actinic_keratosis": "AK",
    "basal_cell_carcinoma": "BCC",
    "dermatofibroma": "DF",
    "melanoma": "MEL",
    "nevus": "NV",
    "pigmented_benign_keratosis": "BKL",
    "seborrheic_keratosis": "BKL",
    "squamous_cell_carcinoma": "SCC",
    "vascular_lesion": "VASC",
}


class ValidateParams(_Section):
    min_width: int = Field(ge=1)
    min_height: int = Field(ge=1)
    min_images_per_class: dict[Literal["train", "test"], int]
    on_label_conflict: Literal["drop", "keep", "fail"] = "drop"
    on_leak: Literal["drop_from_train", "drop_from_test", "keep", "fail"] = "drop_from_train"
    on_duplicate: Literal["keep_first", "keep_all", "fail"] = "keep_first"
    # ISIC's own diagnosis (a one-hot ground-truth CSV): checks the folder labels, decides
    # label conflicts. None switches the check off.
    reference_labels: Path | None = None
    reference_classes: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_REFERENCE_CLASSES),
        description="each of the nine folder labels -> the reference column that diagnoses it",
    )
    reference_other_classes: list[str] = Field(
        default_factory=lambda: ["UNK"],
        description="reference columns that name none of the nine labels",
    )
    on_reference_disagreement: Literal["relabel", "drop", "keep", "fail"] = "relabel"
    near_duplicate_distance: int | None = Field(
        None,
        ge=0,
        le=64,
        description="pHash bits within which two images are near-duplicates; null: off",
    )

    @field_validator("reference_classes")
    @classmethod
    def _every_label_mapped(cls, mapping: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(mapping) - set(LABELS))
        missing = [label for label in LABELS if label not in mapping]
        if unknown or missing:
            raise ValueError(
                f"give a reference column for each of the nine labels {list(LABELS)}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
            )
        if any(not column.strip() or column == "image" for column in mapping.values()):
            raise ValueError("a reference column must be a non-empty name other than 'image'")
        return mapping

    @model_validator(mode="after")
    def _other_classes_are_not_mapped(self) -> "ValidateParams":
        both = sorted(set(self.reference_other_classes) & set(self.reference_classes.values()))
        if both:
            raise ValueError(
                f"reference_other_classes {both} are also in reference_classes: a column "
                "either names some of the nine labels or none"
            )
        return self

    @field_validator("min_images_per_class")
    @classmethod
    def _non_negative(cls, counts: dict[str, int]) -> dict[str, int]:
        if set(counts) != {"train", "test"}:
            raise ValueError("give a count for both train and test")
        if any(n < 0 for n in counts.values()):
            raise ValueError("counts must be >= 0")
        return counts


class AugmentParams(_Section):
    seed: int = 42
    val_fraction: float = Field(gt=0, lt=1)
    target_per_class: int = Field(
        ge=0, description="training images per class after augmentation; 0: no augmented copies"
    )
    max_copies_per_image: int | None = Field(
        None, ge=0, description="cap on augmented copies of one original; null: no cap"
    )
    rotation_degrees: float = Field(ge=0, le=180)
    flip_horizontal: bool = True
    flip_vertical: bool = True
    zoom: float = Field(ge=0, lt=1, description="max fraction cropped before resizing back")
    brightness: float = Field(ge=0, lt=1)
    contrast: float = Field(ge=0, lt=1)
    match_detail_px: int | None = Field(
        None,
        ge=16,
        le=512,
        description="each training image whose original is larger than this side also gets a "
        "copy scaled down to it and back up, so that sharpness does not tell one clinic's "
        "images from another's; null: no such copies",
    )
