"""The drift check (melanoma.sites.drift) of a batch of predictions, as `melanoma site check` and
the clinic page run it. Apart from drift.py, which the train stage uses: predictions come from
melanoma.inference.predict, which train does not depend on."""

from collections.abc import Sequence

import numpy as np

from melanoma.errors import MelanomaError
from melanoma.inference.predict import ImagePrediction
from melanoma.sites.drift import DriftReference, DriftResult, check_drift


class DriftBatchError(MelanomaError, ValueError):
    """A batch the drift check cannot compare (no image files, fewer than 2 left to compare);
    the message says what it holds."""


def compared_images(predictions: Sequence[ImagePrediction]) -> list[ImagePrediction]:
    """The predictions the check compares: readable images that are not unfamiliar (those are
    the warning's business, not the clinic's)."""
    return [p for p in predictions if p.ok and not p.unfamiliar]


def check_predictions(
    reference: DriftReference,
    predictions: Sequence[ImagePrediction],
    alpha: float,
    permutations: int = 500,
) -> DriftResult:
    """check_drift of a batch's compared_images (predicted with the version's detector, which
    gives their features); DriftBatchError if fewer than 2 are left."""
    compared = compared_images(predictions)
    if len(compared) < 2:
        raise DriftBatchError(f"{len(compared)} images left to compare (the check needs 2)")
    return check_drift(
        reference,
        np.array([p.melanoma_probability for p in compared]),
        np.stack([p.answered_features for p in compared]),
        alpha,
        permutations,
    )
