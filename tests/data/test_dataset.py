from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma.data.dataset import make_dataset, split_rows
from melanoma.labels import LABELS


@pytest.fixture
def images(tmp_path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Six 40 px PNGs of random pixels."""
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for n in range(6):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        path = tmp_path / f"image_{n}.png"
        Image.fromarray(pixels, "RGB").save(path)
        paths.append(str(path))
        arrays.append(pixels)
    return paths, arrays


def test_batches_are_uint8_images_with_one_hot_labels_in_file_order(images):
    paths, arrays = images
    labels = np.array([0, 3, 8, 3, 1, 2], dtype=np.int32)
    batches = list(make_dataset(paths, labels, image_size=40, batch_size=4))

    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert [len(b[0]) for b in batches] == [4, 2]
    assert x.dtype == np.uint8 and x.shape == (6, 40, 40, 3)
    # At the file's own size the pixels pass untouched.
    assert np.array_equal(x, np.stack(arrays))
    assert y.shape == (6, len(LABELS))
    assert np.array_equal(y.argmax(axis=1), labels)


def test_images_are_resized_to_the_training_size(images):
    paths, _ = images
    (x, _), *_ = make_dataset(paths, np.zeros(6, np.int32), image_size=24, batch_size=6)
    assert x.dtype.name == "uint8" and tuple(x.shape) == (6, 24, 24, 3)


def test_shuffling_follows_the_seed(images):
    paths, _ = images
    labels = np.arange(6, dtype=np.int32)

    def first_epoch_order(seed: int) -> list[int]:
        dataset = make_dataset(paths, labels, image_size=40, batch_size=6, shuffle_seed=seed)
        return next(iter(dataset))[1].numpy().argmax(axis=1).tolist()

    assert first_epoch_order(1) == first_epoch_order(1)
    assert sorted(first_epoch_order(1)) == list(range(6))
    assert any(first_epoch_order(seed) != list(range(6)) for seed in (1, 2, 3))


def test_training_batches_are_full_but_evaluation_keeps_every_image(images):
    paths, _ = images
    labels = np.zeros(6, np.int32)
    training = make_dataset(paths, labels, image_size=40, batch_size=4, shuffle_seed=1)
    evaluation = make_dataset(paths, labels, image_size=40, batch_size=4)

    assert [len(x) for x, _ in training] == [4]
    assert [len(x) for x, _ in evaluation] == [4, 2]


def test_split_rows_maps_labels_to_model_order_and_rejects_empty_splits():
    manifest = pd.DataFrame(
        {"image_path": ["a.png", "b.png", "c.png"], "label": ["nevus", "melanoma", "nevus"]}
    ).assign(split=["train", "train", "val"])
    paths, label_indices = split_rows(manifest, "train", Path("m.csv"))
    assert paths == ["a.png", "b.png"]
    assert label_indices.tolist() == [LABELS.index("nevus"), LABELS.index("melanoma")]
    with pytest.raises(ValueError, match="m.csv: no images in split 'test'"):
        split_rows(manifest, "test", Path("m.csv"))
