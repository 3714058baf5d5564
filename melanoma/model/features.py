"""Backbone features of every training and validation image, computed once and cached.

With `train.freeze: all` the backbone never changes, so running it on every image of every
epoch is wasted work: stage `features` runs it once per image (augment's copies included) and
`train` fits the head on the cached vectors, in seconds. The cache is a DVC output whose params
are the ones the features depend on, so DVC's run cache keys it by backbone, weights and input
size; `key.json` repeats that key and `train` refuses a cache made for other params.

Features are also kept by image content in a store (data/feature_store, a persistent DVC
output): `<key hash>/<shard>.npz` files of (image file sha256, features). A run computes only
the images the store lacks for its key, so adding a source, or changing augment's copies,
runs the backbone on the new images alone. The store is only ever added to; deleting it costs
a recomputation, never a wrong feature.
"""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from melanoma.config import TrainParams
from melanoma.data.dataset import make_dataset, split_rows
from melanoma.data.manifest import AUGMENTED_COLUMNS, file_sha256, read_manifest
from melanoma.paths import FEATURE_STORE_DIR, FEATURES_DIR

log = logging.getLogger(__name__)

PARTIAL = ".partial.npz"
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
    params: TrainParams,
    manifest_path: Path,
    directory: Path = FEATURES_DIR,
    store_dir: Path = FEATURE_STORE_DIR,
) -> None:
    """Write the features of the train and val rows of the manifest (or only the key, `null`,
    when `params` do not freeze the backbone), computing those `store_dir` lacks."""
    directory.mkdir(parents=True, exist_ok=True)
    store_dir.mkdir(parents=True, exist_ok=True)  # a declared output, even when unused
    key = cache_key(params)
    arrays_path = directory / ARRAYS_FILE
    arrays_path.unlink(missing_ok=True)
    if key is not None:
        manifest = read_manifest(manifest_path, AUGMENTED_COLUMNS)
        split_paths = {split: split_rows(manifest, split, manifest_path)[0] for split in SPLITS}
        store = FeatureStore(store_dir, key)
        content = {p: file_sha256(Path(p)) for paths in split_paths.values() for p in paths}
        missing = sorted({p for p, digest in content.items() if digest not in store})
        log.info(
            "features of %d images: %d in the store, %d to compute",
            len(content),
            len(content) - len(missing),
            len(missing),
        )
        if missing:
            store.add([content[p] for p in missing], compute_features(params, missing))
        arrays = {}
        for split, paths in split_paths.items():
            arrays[f"{split}_features"] = store.get([content[p] for p in paths])
            arrays[f"{split}_paths"] = np.array(paths)
        np.savez(arrays_path, **arrays)
    else:
        log.info("train.freeze=%r: the backbone trains, no features to cache", params.freeze)
    (directory / KEY_FILE).write_text(json.dumps(key, indent=2) + "\n")


def compute_features(params: TrainParams, paths: list[str]) -> np.ndarray:
    """The frozen backbone's features of the image files, in order, in batches."""
    from melanoma.model.architectures import build_model, feature_extractor

    extractor = feature_extractor(build_model(params))
    dataset = make_dataset(paths, np.zeros(len(paths), np.int32), params.image_size, 64)
    batches = [
        extractor.predict_on_batch(images)
        for images, _ in tqdm(dataset, total=len(dataset), desc="features", unit="batch")
    ]
    return np.concatenate(batches).astype(np.float32)


class FeatureStore:
    """Features by image content, for one cache key: shards of (sha256, features) arrays."""

    def __init__(self, root: Path, key: dict):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = root / digest
        self._features: dict[str, np.ndarray] = {}
        for shard in sorted(self.directory.glob("*.npz")):
            if shard.name.endswith(PARTIAL):
                continue  # a write that never finished
            try:
                with np.load(shard) as arrays:
                    self._features.update(
                        zip(arrays["sha256"].tolist(), arrays["features"], strict=True)
                    )
            except (OSError, ValueError, KeyError) as error:
                # A broken shard (an interrupted write) is only a loss of cached work.
                log.warning("%s: unreadable (%s); its images are computed again", shard, error)

    def __contains__(self, digest: str) -> bool:
        return digest in self._features

    def get(self, digests: list[str]) -> np.ndarray:
        return np.stack([self._features[d] for d in digests])

    def add(self, digests: list[str], features: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        partial = self.directory / f"{name}{PARTIAL}"
        np.savez(partial, sha256=np.array(digests), features=features)
        partial.replace(self.directory / f"{name}.npz")
        self._features.update(zip(digests, features, strict=True))


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
