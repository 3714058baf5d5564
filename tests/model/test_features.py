import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from melanoma.config import parse_params
from melanoma.data.dataset import load_image
from melanoma.data.manifest import AUGMENTED_COLUMNS, read_manifest
from melanoma.model import features
from melanoma.model.features import (
    FeatureCacheError,
    dihedral_view,
    read_feature_cache,
    write_feature_cache,
)
from melanoma.params.model import PreprocessParams
from melanoma.paths import FEATURE_STORE_DIR, FEATURES_DIR

AUGMENTED = Path("data/augmented/manifest.csv")
NO_PREPROCESS = PreprocessParams()


def _frozen(project: dict, **train) -> dict:
    """The tiny project with a pretrained Lite0 frozen per `train`, without colour constancy."""
    project["train"].update(architecture="efficientnet_lite0", random_flip=False, **train)
    project["preprocess"] = {"color_constancy": "none", "shades_of_gray_p": 6}
    return project


def _split_paths() -> dict[str, list[str]]:
    manifest = read_manifest(AUGMENTED, AUGMENTED_COLUMNS)
    return {
        s: manifest.loc[manifest["split"] == s, "image_path"].tolist() for s in ("train", "val")
    }


def test_the_views_are_the_eight_symmetries_of_the_square():
    image = tf.reshape(tf.range(16), (1, 4, 4, 1))
    views = [dihedral_view(image, v).numpy().ravel().tolist() for v in range(8)]
    assert len({tuple(v) for v in views}) == 8
    assert views[0] == image.numpy().ravel().tolist()
    np.testing.assert_array_equal(dihedral_view(image, 1), tf.image.flip_left_right(image))
    np.testing.assert_array_equal(dihedral_view(image, 3), tf.image.rot90(image, 2))
    # The first 2 and the first 4 are groups of their own: mirror; both flips and the half turn.
    np.testing.assert_array_equal(
        dihedral_view(dihedral_view(image, 1), 2), dihedral_view(image, 3)
    )


@pytest.mark.slow  # EfficientNet-Lite0 on every tiny image, in two views
def test_the_cache_holds_every_view_of_training_images_and_validation_as_is(
    augmented_project, monkeypatch
):
    from melanoma.model.architectures import build_model, frozen_part

    params = parse_params(_frozen(augmented_project, freeze=2, views=2))
    write_feature_cache(params.train, params.preprocess, AUGMENTED, FEATURES_DIR, FEATURE_STORE_DIR)

    paths = _split_paths()
    cached = read_feature_cache(params.train, params.preprocess, paths, FEATURES_DIR)
    assert cached["train"].shape[:2] == (len(paths["train"]), 2)
    assert cached["val"].shape[:2] == (len(paths["val"]), 1)
    assert cached["train"].shape[2:] == (1, 1, 192)  # block 13's output at 32 px
    extractor = frozen_part(build_model(params.train, params.preprocess), params.train)
    images = tf.stack([load_image(p, params.train.image_size) for p in paths["train"][:3]])
    mirrored = extractor.predict(tf.image.flip_left_right(images), verbose=0)
    np.testing.assert_allclose(cached["train"][:3, 1], mirrored, rtol=1e-5, atol=1e-4)

    # Four views: only the two new ones are computed, the store has the rest.
    computed = []
    original = features.compute_features

    def counting(train, preprocess, image_paths, view=0):
        computed.append((view, len(image_paths)))
        return original(train, preprocess, image_paths, view)

    monkeypatch.setattr(features, "compute_features", counting)
    four = params.train.model_copy(update={"views": 4})
    write_feature_cache(four, params.preprocess, AUGMENTED, FEATURES_DIR, FEATURE_STORE_DIR)
    assert computed == [(2, len(paths["train"])), (3, len(paths["train"]))]
    np.testing.assert_array_equal(
        read_feature_cache(four, params.preprocess, paths, FEATURES_DIR)["train"][:, :2],
        cached["train"],
    )


@pytest.mark.slow  # EfficientNet-Lite0 on every tiny image
def test_a_cache_made_for_other_params_or_corrupt_is_refused_naming_the_file(augmented_project):
    params = parse_params(_frozen(augmented_project, freeze="all"))
    write_feature_cache(params.train, params.preprocess, AUGMENTED, FEATURES_DIR, FEATURE_STORE_DIR)
    paths = _split_paths()
    read_feature_cache(params.train, params.preprocess, paths, FEATURES_DIR)

    shades = PreprocessParams(color_constancy="shades_of_gray")
    with pytest.raises(FeatureCacheError, match="key.json: features computed for .*shades_of_gray"):
        read_feature_cache(params.train, shades, paths, FEATURES_DIR)
    for other in ({"views": 2}, {"freeze": 3}, {"image_size": 48}):
        with pytest.raises(FeatureCacheError, match="run `dvc repro features`"):
            read_feature_cache(
                params.train.model_copy(update=other), params.preprocess, paths, FEATURES_DIR
            )

    arrays = Path("data/features/features.npz")
    arrays.write_bytes(arrays.read_bytes()[:1000])
    with pytest.raises(FeatureCacheError, match=f"{arrays}: unreadable"):
        read_feature_cache(params.train, params.preprocess, paths, FEATURES_DIR)


def test_the_key_names_what_the_cache_depends_on_and_keeps_older_stores_valid():
    from tests.helpers import train_params

    frozen = train_params(architecture="efficientnet_lite0", freeze="all", image_size=32)
    plain = features.cache_key(frozen, NO_PREPROCESS)
    assert set(plain) == {"architecture", "weights_sha256", "image_size", "mixed_precision"}
    top = features.cache_key(frozen.model_copy(update={"freeze": 3}), NO_PREPROCESS)
    assert top["output"] == "block12_add"
    shades = features.cache_key(frozen, PreprocessParams(color_constancy="shades_of_gray"))
    assert shades["color_constancy"] == {"shades_of_gray": 6.0}
    assert features.cache_key(frozen.model_copy(update={"freeze": "none"}), NO_PREPROCESS) is None
    assert json.dumps(plain) != json.dumps(top)
    # Another Lite: its own weights, and its own layer below the top blocks.
    lite2 = frozen.model_copy(update={"architecture": "efficientnet_lite2", "freeze": 3})
    key = features.cache_key(lite2, NO_PREPROCESS)
    assert key["weights_sha256"].startswith("9656183e") and key["output"] == "block17_add"
