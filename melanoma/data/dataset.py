"""The tf.data input pipeline: a manifest split -> batches of (uint8 image, one-hot label).

Images stay uint8 all the way: the model does its own preprocessing, so the same files fed
through `load_image` give exactly what the saved model is trained on.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from melanoma.labels import LABELS


def split_rows(
    manifest: pd.DataFrame, split: str, manifest_path: Path
) -> tuple[list[str], np.ndarray]:
    """Image paths and label indices (in melanoma.labels.LABELS order) of one split."""
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"{manifest_path}: no images in split {split!r}")
    unknown = sorted(set(rows["label"]) - set(LABELS))
    if unknown:
        raise ValueError(f"{manifest_path}: unknown label(s) {unknown} in split {split!r}")
    label_indices = rows["label"].map(LABELS.index).to_numpy(dtype=np.int32)
    return rows["image_path"].tolist(), label_indices


def resize_uint8(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize uint8 images (one, or a batch) to image_size x image_size: antialiased bilinear,
    rounded back to uint8. The one resize of training, evaluation and prediction alike."""
    resized = tf.image.resize(images, [image_size, image_size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a PNG/JPEG file to a uint8 (image_size, image_size, 3) tensor.

    Images already at that size pass untouched; others go through `resize_uint8`.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == image_size),
        lambda: image,
        lambda: resize_uint8(image, image_size),
    )
    return tf.ensure_shape(image, [image_size, image_size, 3])


def make_dataset(
    paths: list[str],
    label_indices: np.ndarray,
    image_size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 images, one-hot labels[, sample weights]), reshuffled every epoch if
    `shuffle_seed` is set (then only full batches).

    Decoded images are cached in memory after the first pass, so later epochs skip the decoding.
    Labels are one-hot so that the loss can apply label smoothing.
    """
    labels = tf.one_hot(label_indices, len(LABELS), dtype=tf.float32)
    if weights is None:
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels, weights))
    dataset = dataset.map(
        lambda path, *rest: (load_image(path, image_size), *rest),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    # The autotuning thread makes every iterator's destructor wait for its next wake-up: Keras
    # drops an iterator at each epoch end, and that stalled training for up to ~50 s each time.
    # Without it, AUTOTUNE still means "as many parallel calls as cores".
    options.autotune.enabled = False
    # A shuffled (training) dataset drops its last partial batch: batch normalisation on a
    # batch of one image is meaningless, and oneDNN crashed (segfault) on it in the resnet.
    batched = dataset.batch(batch_size, drop_remainder=shuffle_seed is not None)
    return batched.prefetch(tf.data.AUTOTUNE).with_options(options)
