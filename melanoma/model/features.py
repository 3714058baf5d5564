"""What the frozen part of the network gives every training and validation image, computed
once and cached.

With `train.freeze: all` the backbone never changes, so running it on every image of every
epoch is wasted work: stage `features` runs it once per image (augment's copies included) and
`train` fits the head on the cached vectors, in seconds. With `train.freeze: n` the lower
blocks are frozen: the cache holds their output activations (6 x 6 x 192 at 180 px for n = 1
to 4), and `train` runs only the top n blocks and the head on them, a fraction of the network's
cost. Exact views of a training image (mirror, flips, quarter turns: `train.views`) are cached
as well; transforms that are not exact for dermoscopy (arbitrary rotations, zoom, colour
jitter) would need a cached copy per random draw, so they are augment's copies or not at all.

The cache is a DVC output whose params are the ones the cache depends on, so DVC's run cache
keys it by backbone, weights, input size, colour constancy and where the frozen part ends;
`key.json` repeats that key and `train` refuses a cache made for other params.

Features are also kept by image content in a store (data/feature_store, a persistent DVC
output): `<key hash>/<shard>.npz` files of (image file sha256, features). A run computes only
the images the store lacks for its key, so adding a source, or changing augment's copies,
runs the backbone on the new images alone. The store is only ever added to; deleting it costs
a recomputation, never a wrong feature.
"""

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from melanoma.data.dataset import make_dataset, split_rows
from melanoma.data.manifest import AUGMENTED_COLUMNS, file_sha256, read_manifest
from melanoma.errors import MelanomaError
from melanoma.params.lite_specs import lite_spec
from melanoma.params.model import PreprocessParams, TrainParams

log = logging.getLogger(__name__)

PARTIAL = ".partial.npz"
KEY_FILE = "key.json"
ARRAYS_FILE = "features.npz"
SPLITS = ("train", "val")


class FeatureCacheError(MelanomaError, ValueError):
    """The cached features are missing or were computed for other params or images."""


# The 8 exact views of a square image (the dihedral group) as (quarter turns, then mirror):
# `train.views: v` caches the first v. 2: + the mirror; 4: + the vertical flip and the half turn.
VIEWS = ((0, False), (0, True), (2, True), (2, False), (1, False), (3, False), (1, True), (3, True))


def dihedral_view(images: tf.Tensor, view: int) -> tf.Tensor:
    """View `view` (an index of VIEWS) of a batch of square images."""
    quarter_turns, mirror = VIEWS[view]
    images = tf.image.rot90(images, quarter_turns)
    return tf.image.flip_left_right(images) if mirror else images


def cache_key(params: TrainParams, preprocess: PreprocessParams) -> dict | None:
    """What the cached features depend on; None when the backbone trains whole (no cache)."""
    if not params.caches_features:
        return None
    spec = lite_spec(params.architecture)
    key = {
        "architecture": params.architecture,
        "weights_sha256": spec.sha256,
        "image_size": params.image_size,
        "mixed_precision": params.mixed_precision,
    }
    # Named only when they differ from the pooled features of unaltered images, so that the
    # stores made before these params existed stay valid.
    if isinstance(params.freeze, int):  # not "all" (nor "none": no cache)
        key["output"] = spec.cut_layer(params.freeze)
    if preprocess.color_constancy == "shades_of_gray":
        key["color_constancy"] = {"shades_of_gray": preprocess.shades_of_gray_p}
    return key


def views_per_split(params: TrainParams) -> dict[str, int]:
    """Training images are cached in `train.views` views; validation images as they are."""
    return {"train": params.views, "val": 1}


def _key_file(params: TrainParams, preprocess: PreprocessParams) -> dict | None:
    key = cache_key(params, preprocess)
    return None if key is None else {**key, "views": params.views}


def write_feature_cache(
    params: TrainParams,
    preprocess: PreprocessParams,
    manifest_path: Path,
    directory: Path,
    store_dir: Path,
) -> None:
    """Write the cached inputs of the trainable part for the train rows of the manifest (each
    in `params.views` views) and the val rows (as they are), computing those `store_dir` lacks;
    or only the key, `null`, when `params` do not freeze the backbone."""
    directory.mkdir(parents=True, exist_ok=True)
    store_dir.mkdir(parents=True, exist_ok=True)  # a declared output, even when unused
    key = cache_key(params, preprocess)
    arrays_path = directory / ARRAYS_FILE
    arrays_path.unlink(missing_ok=True)
    if key is not None:
        manifest = read_manifest(manifest_path, AUGMENTED_COLUMNS)
        split_paths = {split: split_rows(manifest, split, manifest_path)[0] for split in SPLITS}
        split_views = views_per_split(params)
        store = FeatureStore(store_dir, key)
        content = {p: file_sha256(Path(p)) for paths in split_paths.values() for p in paths}
        wanted = {
            (path, view)
            for split, paths in split_paths.items()
            for path in paths
            for view in range(split_views[split])
        }
        missing = sorted(pair for pair in wanted if _entry(content[pair[0]], pair[1]) not in store)
        log.info(
            "%s of %d images in %d views: %d in the store, %d to compute",
            key.get("output", "features"),
            len(content),
            len(wanted),
            len(wanted) - len(missing),
            len(missing),
        )
        for view in range(params.views):
            paths = [path for path, v in missing if v == view]
            if paths:
                entries = [_entry(content[p], view) for p in paths]
                store.add(entries, compute_features(params, preprocess, paths, view))
        arrays: dict[str, np.ndarray] = {}
        for split, paths in split_paths.items():
            views = range(split_views[split])
            stacked = [store.get([_entry(content[p], v) for p in paths]) for v in views]
            arrays[f"{split}_features"] = np.stack(stacked, axis=1)  # (images, views, ...)
            arrays[f"{split}_paths"] = np.array(paths)
        # numpy's stubs read a keyword of **arrays as savez's `allow_pickle: bool`
        np.savez(arrays_path, **arrays)  # type: ignore[arg-type]
    else:
        log.info("train.freeze=%r: the backbone trains, no features to cache", params.freeze)
    (directory / KEY_FILE).write_text(json.dumps(_key_file(params, preprocess), indent=2) + "\n")


def _entry(digest: str, view: int) -> str:
    """The store's name for one view of one image file: the identity keeps the bare digest."""
    return digest if view == 0 else f"{digest}/{view}"


def compute_features(
    params: TrainParams, preprocess: PreprocessParams, paths: list[str], view: int = 0
) -> np.ndarray:
    """The frozen part's output for view `view` of the image files, in order, in batches."""
    from melanoma.model.architectures import build_model, frozen_part

    extractor = frozen_part(build_model(params, preprocess), params)
    dataset = make_dataset(paths, np.zeros(len(paths), np.int32), params.image_size, 64)
    batches = [
        extractor.predict_on_batch(dihedral_view(images, view))
        for images, _ in tqdm(dataset, total=len(dataset), desc=f"view {view}", unit="batch")
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
    params: TrainParams,
    preprocess: PreprocessParams,
    split_paths: dict[str, list[str]],
    directory: Path,
) -> dict[str, np.ndarray]:
    """The cached inputs of each split, (images, views, ...), in the order of `split_paths`
    (the manifest's): `params.views` views of each training image, one of each other.

    Raises FeatureCacheError if the cache is missing, unreadable, was made for other params,
    or lists other images than the manifest does.
    """
    key_path, arrays_path = directory / KEY_FILE, directory / ARRAYS_FILE
    if not key_path.is_file():
        raise FeatureCacheError(f"{key_path}: no feature cache; run `dvc repro features`")
    expected, found = _key_file(params, preprocess), json.loads(key_path.read_text())
    if found != expected:
        raise FeatureCacheError(
            f"{key_path}: features computed for {found}, train params need {expected}; "
            "run `dvc repro features`"
        )
    try:
        with np.load(arrays_path) as arrays:
            stored = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise FeatureCacheError(
            f"{arrays_path}: unreadable ({error}); run `dvc repro -f features`"
        ) from error
    features = {}
    for split, paths in split_paths.items():
        if f"{split}_paths" not in stored or stored[f"{split}_paths"].tolist() != list(paths):
            raise FeatureCacheError(
                f"{arrays_path}: the {split} images differ from the manifest's; "
                "run `dvc repro features`"
            )
        features[split] = stored[f"{split}_features"]
    for split, array in features.items():
        if array.shape[1] != views_per_split(params)[split]:
            raise FeatureCacheError(
                f"{arrays_path}: {array.shape[1]} views of the {split} images, train params "
                f"need {views_per_split(params)[split]}; run `dvc repro features`"
            )
    return features
