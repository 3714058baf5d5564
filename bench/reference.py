"""The reference: the common notebook recipe that published solutions of this task train.

`image_dataset_from_directory` on the source's Train folder with an 80/20 split, the TensorFlow
tutorial's cache/shuffle/prefetch step, Rescaling, three Conv2D+MaxPooling blocks (16/32/64),
Flatten, Dense(128), Dense(classes) logits, Adam, sparse cross-entropy from logits. It reads the
raw folders, duplicates, leaks and conflicting labels included, as those notebooks do.

Run as a subprocess by bench.run, so that its peak memory is its own:
`python -m bench.reference --source DIR --image-size 180 --epochs 30 --out FILE`.
"""

import argparse
import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bench.process import peak_rss_mib
from bench.source import split_folder
from melanoma.labels import LABELS, canonical_label
from melanoma.logs import setup_logging
from melanoma.model.curves import EpochTimer, training_summary

log = logging.getLogger(__name__)

NOTEBOOK_SEED = 123  # the seed of the TensorFlow tutorial the notebooks copy
VALIDATION_SPLIT = 0.2
BATCH_SIZE = 32
SHUFFLE_BUFFER = 1000


def recipe_model(image_size: int, classes: int) -> keras.Model:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(classes),
        ]
    )


class LoggedEpochTimer(EpochTimer):
    """The project's epoch timer, logging the reference's curves as epochs end."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        super().on_epoch_end(epoch, logs)
        log.info(
            "reference epoch %d: accuracy %.4f val_accuracy %.4f (%.1f s)",
            epoch + 1,
            logs["accuracy"],
            logs["val_accuracy"],
            self.seconds[-1],
        )


def train_reference(
    train_dir: Path, image_size: int, epochs: int
) -> tuple[keras.Model, list[str], dict]:
    """Train the recipe; return the model, its class (folder) names in output order, and the
    summary of melanoma.model.curves.training_summary (same speed definitions as the train
    stage)."""
    keras.utils.set_random_seed(NOTEBOOK_SEED)
    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        train_dir,
        validation_split=VALIDATION_SPLIT,
        subset="both",
        seed=NOTEBOOK_SEED,
        image_size=(image_size, image_size),
        batch_size=BATCH_SIZE,
    )
    class_names = train_ds.class_names
    train_images, val_images = len(train_ds.file_paths), len(val_ds.file_paths)
    train_ds = train_ds.cache().shuffle(SHUFFLE_BUFFER).prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.cache().prefetch(tf.data.AUTOTUNE)

    model = recipe_model(image_size, len(class_names))
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = LoggedEpochTimer()
    fitted = model.fit(
        train_ds, validation_data=val_ds, epochs=epochs, callbacks=[timer], verbose=0
    )
    history = pd.DataFrame(fitted.history).assign(epoch=range(1, epochs + 1))
    summary = training_summary(history, timer.seconds, train_images, early_stopping=False)
    return model, class_names, {**summary.to_dict(), "val_images": val_images}


def in_label_order(probabilities: np.ndarray, class_names: list[str]) -> np.ndarray:
    """(n, len(LABELS)) probabilities in melanoma.labels.LABELS order from the model's columns
    in folder order; a label without a training folder gets probability 0."""
    ordered = np.zeros((len(probabilities), len(LABELS)))
    for column, name in enumerate(class_names):
        label = canonical_label(name)
        if label is None:
            raise ValueError(f"training folder {name!r} is not one of the nine class folders")
        ordered[:, LABELS.index(label)] = probabilities[:, column]
    return ordered


def predict_folder(
    model: keras.Model, folder: Path, class_names: list[str], image_size: int
) -> tuple[list[str], np.ndarray]:
    """Paths of the images under `folder` and their class probabilities (LABELS order), read
    and resized the way the recipe reads its training images."""
    dataset = keras.utils.image_dataset_from_directory(
        folder,
        labels=None,
        shuffle=False,
        image_size=(image_size, image_size),
        batch_size=BATCH_SIZE,
    )
    logits = model.predict(dataset, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    return list(dataset.file_paths), in_label_order(probabilities.astype(np.float64), class_names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--source", type=Path, required=True, help="directory of Train/ and Test/")
    parser.add_argument("--image-size", type=int, default=180)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    setup_logging()

    source = args.source.resolve()
    model, class_names, summary = train_reference(
        split_folder(source, "train"), args.image_size, args.epochs
    )
    paths, probabilities = predict_folder(
        model, split_folder(source, "test"), class_names, args.image_size
    )
    result = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": BATCH_SIZE,
        "class_names": class_names,
        **summary,
        "test_predictions": {
            "source_path": [Path(p).resolve().relative_to(source).as_posix() for p in paths],
            "probabilities": probabilities.tolist(),
        },
        "peak_rss_mib": peak_rss_mib(),
    }
    args.out.write_text(json.dumps(result, allow_nan=False))
    log.info(
        "reference: %.1f s/epoch, %.0f images/s; wrote %s",
        summary["seconds_per_epoch"],
        summary["images_per_second"],
        args.out,
    )


if __name__ == "__main__":
    main()
