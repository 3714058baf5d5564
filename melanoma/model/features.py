"""Backbone features of every training and validation image, computed once and cached.

With `train.freeze: all` the backbone never changes, so running it on every image of every
epoch is wasted work: stage `features` runs it once per image (augment's copies included) and
`train` fits the head on the cached vectors, in seconds. The cache is a DVC output whose params
are the ones the features depend on, so DVC's run cache keys it by backbone, weights and input
size; `key.json` repeats that key and `train` refuses a cache made for other params.
"""

import json
import logging
from pathlib import Path

import numpy as np

from melanoma.config import TrainParams
from melanoma.data.dataset import make_dataset, split_rows
from melanoma.data.manifest import AUGMENTED_COLUMNS, read_manifest
from melanoma.paths import FEATURES_DIR

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
ARRAYS_FILE = "features.npz"
SPLITS = ("train", "val")


class FeatureCacheError(ValueError):
    """The cached features are missing or were computed for other params or images."""


def cache_key(params: TrainParams) -> dict | None:
    """What the cached features depend on; None when the backbone is not frozen (no cache)."""
    if not params.caches_features:
        return None
    from melanoma.model.efficientnet_lite import WEIGHTS_SHA256

    return {
        "architecture": params.architecture,
        "weights_sha256": WEIGHTS_SHA256,
        "image_size": params.image_size,
        "mixed_precision": params.mixed_precision,
    }


def write_feature_cache(
    params: TrainParams, manifest_path: Path, directory: Path = FEATURES_DIR
) -> None:
    """Compute and write the features of the train and val rows of the manifest (or only the
    key, `null`, when `params` do not freeze the backbone)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key(params)
    arrays_path = directory / ARRAYS_FILE
    arrays_path.unlink(missing_ok=True)
    if key is not None:
        from melanoma.model.architectures import build_model, feature_extractor

        extractor = feature_extractor(build_model(params))
        manifest = read_manifest(manifest_path, AUGMENTED_COLUMNS)
        arrays = {}
        for split in SPLITS:
            paths, labels = split_rows(manifest, split, manifest_path)
            dataset = make_dataset(paths, labels, params.image_size, params.batch_size)
            images = dataset.map(lambda image, _label: image)
            arrays[f"{split}_features"] = extractor.predict(images, verbose=0).astype(np.float32)
            arrays[f"{split}_paths"] = np.array(paths)
            log.info("%s: features of %d images", split, len(paths))
        np.savez(arrays_path, **arrays)
    else:
        log.info("train.freeze=%r: the backbone trains, no features to cache", params.freeze)
    (directory / KEY_FILE).write_text(json.dumps(key, indent=2) + "\n")


def read_feature_cache(
    params: TrainParams, split_paths: dict[str, list[str]], directory: Path = FEATURES_DIR
) -> dict[str, np.ndarray]:
    """The cached features of each split, in the order of `split_paths` (the manifest's).

    Raises FeatureCacheError if the cache is missing, was made for other params, or lists other
    images than the manifest does.
    """
    key_path = directory / KEY_FILE
    if not key_path.is_file():
        raise FeatureCacheError(f"{key_path}: no feature cache; run `dvc repro features`")
    expected, found = cache_key(params), json.loads(key_path.read_text())
    if found != expected:
        raise FeatureCacheError(
            f"{key_path}: features computed for {found}, train params need {expected}; "
            "run `dvc repro features`"
        )
    with np.load(directory / ARRAYS_FILE) as arrays:
        features = {}
        for split, paths in split_paths.items():
            if arrays[f"{split}_paths"].tolist() != list(paths):
                raise FeatureCacheError(
                    f"{directory / ARRAYS_FILE}: the {split} images differ from the manifest's; "
                    "run `dvc repro features`"
                )
            features[split] = arrays[f"{split}_features"]
    return features
