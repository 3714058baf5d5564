"""What `train` keeps of a trained model for its sites: the unfamiliar-image detector and the
drift check's reference, from one pass of the model over a sample of the training split and
over the validation split."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from melanoma.data.dataset import make_dataset
from melanoma.inference.unfamiliar import UnfamiliarDetector, depth_of, fit_detector, probe
from melanoma.labels import MELANOMA_INDEX
from melanoma.params.sites import UnfamiliarParams
from melanoma.sites.drift import DriftReference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteReferences:
    unfamiliar: UnfamiliarDetector
    drift: DriftReference


def probe_outputs(
    extractor: keras.Model, image_paths: Sequence[str], image_size: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, 9), features (n, d)) of the probe on manifest images, read by the
    training input pipeline."""
    labels = np.zeros(len(image_paths), int)
    dataset = make_dataset(list(image_paths), labels, image_size, batch_size)
    probabilities, features = extractor.predict(
        dataset.map(lambda images, _labels: images), verbose=0
    )
    return np.asarray(probabilities), np.asarray(features)


def fit_references(
    model: keras.Model,
    train_paths: Sequence[str],
    val_paths: Sequence[str],
    params: UnfamiliarParams,
    batch_size: int,
    seed: int,
) -> SiteReferences:
    """The detector, fitted on a seeded sample of `params.fit_images` training images with its
    threshold set on the validation images, and the validation split's P(melanoma) and
    features as the drift reference."""
    chosen = np.random.default_rng(seed).permutation(len(train_paths))[: params.fit_images]
    fit_paths = [train_paths[i] for i in sorted(chosen)]
    depth = depth_of(model, params.depth)
    extractor = probe(model, depth)
    size = model.input_shape[1]
    log.info(
        "fitting the unfamiliar-image score at %s on %d training images", depth, len(fit_paths)
    )
    _, train_features = probe_outputs(extractor, fit_paths, size, batch_size)
    val_probabilities, val_features = probe_outputs(extractor, val_paths, size, batch_size)
    detector = fit_detector(
        train_features, val_features, depth, params.neighbours, params.validation_flagged
    )
    drift = DriftReference(melanoma=val_probabilities[:, MELANOMA_INDEX], features=val_features)
    return SiteReferences(detector, drift)
