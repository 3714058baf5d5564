"""The `unfamiliar` score: how far an image's features lie from the training split's.

A chart, a screenshot, a blank or noisy image or a photograph still gets nine probabilities
that sum to one, and often a melanoma alert. The score warns of such images. It is the cosine
distance from the image's features to its k-th nearest neighbour among a seeded sample of the
training split's (deep nearest neighbours, Sun et al. 2022), the features being the
mean-pooled output of one layer of the network (`unfamiliar.depth`). The threshold flags
`unfamiliar.validation_flagged` of the validation split.

Measured on the pipeline's model (bench/unfamiliar.py, docs/evaluation.md), the default, block
14 of EfficientNet-Lite0, flags every non-lesion image and almost no lesion image of a source
the score was not fitted on; a Mahalanobis distance on the classifier's pooled features missed
a quarter of the non-lesion images and flagged a fifth of the other source's lesions. Unfamiliar
means "not a dermoscopic lesion image": a clinic's shift is the drift check's business.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from melanoma.errors import MelanomaError
from melanoma.model import ensemble
from melanoma.model.architectures import OUTPUT_NAME
from melanoma.params.lite_specs import LITE

log = logging.getLogger(__name__)

POOLED = "pooled"  # the features the classifier's last layer takes: every architecture has them
# The detector's file name beside a trained model and among a served model's stored files.
UNFAMILIAR_FILE_NAME = "unfamiliar.npz"


class DetectorFileError(MelanomaError):
    """An unfamiliar-detector file that cannot be read; the message names it."""


@dataclass(frozen=True)
class UnfamiliarDetector:
    """The training sample's unit-length features at `depth`, k and the threshold."""

    depth: str
    reference: np.ndarray  # (n, d), each row of unit length
    neighbours: int
    threshold: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The score of each image (rows of `features`, taken at `depth`): 1 - the cosine
        similarity to its k-th most similar training image."""
        similarities = unit_rows(features) @ self.reference.T
        kth = np.partition(similarities, -self.neighbours, axis=1)[:, -self.neighbours]
        return 1.0 - kth

    def is_unfamiliar(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            np.savez(
                file,
                depth=np.array(self.depth),
                reference=self.reference.astype(np.float32),
                neighbours=np.int64(self.neighbours),
                threshold=np.float64(self.threshold),
            )

    @classmethod
    def load(cls, path: Path) -> "UnfamiliarDetector":
        try:
            with np.load(path) as arrays:
                return cls(
                    depth=str(arrays["depth"]),
                    reference=arrays["reference"],
                    neighbours=int(arrays["neighbours"]),
                    threshold=float(arrays["threshold"]),
                )
        except (OSError, KeyError, ValueError) as error:
            raise DetectorFileError(
                f"{path}: not an unfamiliar-image detector file ({error})"
            ) from None


def unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def probe(model: keras.Model, depth: str) -> keras.Model:
    """uint8 images -> [probabilities, the pooled features at `depth`], in one pass.

    A `depth` other than POOLED is a layer of the EfficientNet-Lite backbone, its output
    averaged over the image as the backbone pools its last one. In an ensemble
    (melanoma.model.ensemble) it is a layer of the frozen part the members share, and POOLED is
    every member's pooled features side by side.
    """
    if ensemble.is_ensemble(model):
        return ensemble.probe(model, None if depth == POOLED else depth)
    if depth == POOLED:
        # What the softmax layer takes (after the dropout, which is the identity in inference).
        return keras.Model(model.inputs, [model.output, model.layers[-1].input])
    backbone = _lite_backbone(model)
    if backbone is None:
        raise ValueError(
            f"unfamiliar.depth {depth}: model {model.name} has no EfficientNet-Lite backbone"
        )
    if depth not in {layer.name for layer in backbone.layers}:
        raise ValueError(f"unfamiliar.depth: {depth} is not a layer of {backbone.name}")
    inside = layers.GlobalAveragePooling2D()(backbone.get_layer(depth).output)
    # The backbone again, with the layer's pooled output as an output too; the head on top.
    pooled, features = keras.Model(backbone.inputs, [backbone.output, inside])(
        model.get_layer("scale").output
    )
    return keras.Model(model.inputs, [model.get_layer(OUTPUT_NAME)(pooled), features])


def depth_of(model: keras.Model, depth: str) -> str:
    """`depth` (unfamiliar.depth, an EfficientNet-Lite layer) for a Lite model; POOLED for
    the other architectures (and an ensemble of whole models)."""
    if ensemble.is_ensemble(model):
        return depth if ensemble.shared_part(model) is not None else POOLED
    return depth if _lite_backbone(model) is not None else POOLED


def _lite_backbone(model: keras.Model) -> keras.Model | None:
    names = {spec.backbone_name for spec in LITE.values()}
    return next((layer for layer in model.layers if layer.name in names), None)


def fit_detector(
    train_features: np.ndarray,
    val_features: np.ndarray,
    depth: str,
    neighbours: int,
    validation_flagged: float,
) -> UnfamiliarDetector:
    """The detector of the training features, its threshold above all but
    `validation_flagged` of the validation scores."""
    if len(train_features) < neighbours:
        raise ValueError(
            f"unfamiliar.neighbours={neighbours} exceeds the {len(train_features)} training "
            "images the score is fitted on"
        )
    unthresholded = UnfamiliarDetector(depth, unit_rows(train_features), neighbours, np.inf)
    val_scores = unthresholded.scores(val_features)
    threshold = float(np.quantile(val_scores, 1 - validation_flagged))
    log.info(
        "unfamiliar-image threshold %.4f: %d of %d validation images above it",
        threshold,
        np.sum(val_scores > threshold),
        len(val_scores),
    )
    return UnfamiliarDetector(depth, unthresholded.reference, neighbours, threshold)
