"""Asking a trained model about image files: loading it, preparing images, batching predictions.

An image goes through exactly the steps a training image went through: `melanoma.data.images`
decodes it to RGB and crops/resizes it to a square at the ingest size (what the ingest stage
writes), then it is resized to the model's input size by `melanoma.data.dataset.resize_uint8`, as in
training and evaluation. So a file from data/ingested gets the same probabilities
here as in the evaluate stage. A trained model (a .keras file, the training run's model) is
scored with `predict.views` test-time views (the `views` argument); a registered version carries
the views its threshold was chosen on and keeps them (melanoma.inference.views).
"""

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import mlflow
import numpy as np
from tqdm import tqdm

from melanoma.data.dataset import make_dataset, resize_uint8
from melanoma.data.images import ImageRejected, decode_rgb, square_resize
from melanoma.errors import MelanomaError
from melanoma.inference.unfamiliar import (
    UNFAMILIAR_FILE_NAME,
    DetectorFileError,
    UnfamiliarDetector,
)
from melanoma.inference.views import carrying_views, probe
from melanoma.labels import LABELS, MELANOMA

log = logging.getLogger(__name__)

# Extensions picked up when a folder is given; a file named explicitly is tried whatever its name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
UNREADABLE = "unreadable"
BATCH_SIZE = 32  # images per model call: bounds memory, whatever the number of files
# Where a served MLflow model (melanoma.registry.serving) keeps its files: pyfunc's artifacts.
ARTIFACTS_DIR = "artifacts"


class ModelLoadError(MelanomaError):
    """The model reference names nothing loadable; the message says which and why."""


@dataclass(frozen=True)
class ImagePrediction:
    """The model's answer for one file, or why there is none (`reason` is a short code)."""

    path: str
    probabilities: dict[str, float] | None = None
    reason: str | None = None
    error: str | None = None
    # The unfamiliar-image score and whether it is above the model's threshold (None: the
    # model carries no detector)
    unfamiliar_score: float | None = None
    unfamiliar: bool | None = None
    # the features the score compares (the drift check's embedding); None without a detector
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    # P(melanoma) of a site's head (melanoma.sites.head), which then replaces the model's own
    site_melanoma_probability: float | None = None

    @property
    def ok(self) -> bool:
        return self.probabilities is not None

    @property
    def answered_probabilities(self) -> dict[str, float]:
        """`probabilities` of a file the model answered (`ok`); a bug to ask of another."""
        if self.probabilities is None:
            raise ValueError(f"{self.path} has no probabilities: {self.reason}: {self.error}")
        return self.probabilities

    @property
    def answered_features(self) -> np.ndarray:
        """`features` of a file answered with a detector; a bug to ask of another."""
        if self.features is None:
            raise ValueError(f"{self.path} has no features: {self.reason or 'no detector'}")
        return self.features

    @property
    def top_label(self) -> str:
        probabilities = self.answered_probabilities
        return max(probabilities, key=lambda label: probabilities[label])

    @property
    def melanoma_probability(self) -> float:
        """The site head's P(melanoma) if there is one, else the model's."""
        if self.site_melanoma_probability is not None:
            return self.site_melanoma_probability
        return self.answered_probabilities[MELANOMA]

    def melanoma_alert(self, threshold: float) -> bool:
        return self.melanoma_probability >= threshold


def is_mlflow_uri(reference: str) -> bool:
    return "://" in reference or reference.startswith(("models:/", "runs:/"))


def load_model(reference: str, views: int = 1) -> keras.Model:
    """A Keras model from an MLflow URI (models:/name@alias, models:/name/3, runs:/id/model),
    a .keras file, or a directory holding an MLflow model. A trained model gets `views`
    test-time views (`scored_with_views`); a served model (a registered version) keeps its own."""
    location = model_location(reference)
    return scored_with_views(_keras_model(location, reference), location, views)


def load_model_and_detector(
    reference: str, views: int = 1
) -> tuple[keras.Model, UnfamiliarDetector | None]:
    """The Keras model of `reference` (as `load_model`) and the unfamiliar-image detector
    stored with it (`stored_file`); None if there is none."""
    location = model_location(reference)
    model = scored_with_views(_keras_model(location, reference), location, views)
    detector_file = stored_file(location, UNFAMILIAR_FILE_NAME)
    if detector_file is None:
        return model, None
    try:
        return model, UnfamiliarDetector.load(detector_file)
    except DetectorFileError as error:
        raise ModelLoadError(f"model {reference}: {error}") from None


def scored_with_views(model: keras.Model, location: Path, views: int) -> keras.Model:
    """The model loaded from `location` as it is scored: a served model (an MLflow model with
    pyfunc artifacts: what a registry version points to) as it is, with the views its threshold
    was chosen on, even none; a trained model (a .keras file, a training run's Keras model) with
    `views` test-time views, unless it carries views of its own."""
    if location.is_dir() and (location / ARTIFACTS_DIR).is_dir():
        return model
    return carrying_views(model, views)


def model_location(reference: str) -> Path:
    """A local .keras file or MLflow model folder for `reference` (downloaded if a URI): what
    the load functions read, and where `stored_file` looks."""
    if not is_mlflow_uri(reference):
        if not Path(reference).exists():
            raise ModelLoadError(f"model {reference}: no such file, and not an MLflow model URI")
        return Path(reference)
    try:
        return Path(mlflow.artifacts.download_artifacts(reference))
    except Exception as error:  # MLflow raises its own kinds, and OSError
        raise ModelLoadError(f"model {reference} cannot be loaded: {error}") from error


def _keras_model(location: Path, reference: str) -> keras.Model:
    try:
        if location.is_file():
            return keras.saving.load_model(location)
        return mlflow.keras.load_model(str(location))
    except Exception as error:  # MLflow, Keras and h5py each raise their own kinds
        raise ModelLoadError(f"model {reference} cannot be loaded: {error}") from error


def stored_file(model_location: Path, name: str) -> Path | None:
    """A file stored with a model (`name`, e.g. unfamiliar.npz): in a served MLflow model,
    artifacts/<name>; beside a .keras file, <name> (as `train` writes models/). None if absent."""
    if model_location.is_file():
        candidate = model_location.with_name(name)
    else:
        candidate = model_location / ARTIFACTS_DIR / name
    return candidate if candidate.is_file() else None


def model_input_size(model: keras.Model) -> int:
    """Side of the square images the model takes (its input is (None, size, size, 3))."""
    _, height, width, channels = model.input_shape
    if height != width or channels != 3 or height is None:
        raise ModelLoadError(
            f"model input shape {model.input_shape} is not (None, size, size, 3) RGB images"
        )
    return height


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files in the order given, each folder replaced by its image files (recursively, sorted).

    A path that does not exist is kept, so that it gets its own error instead of vanishing.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith(".")
                )
            )
        else:
            found.append(path)
    return found


def read_image(path: Path, ingest_size: int, max_pixels: int) -> np.ndarray:
    """The file as the ingest stage would have written it: uint8 (ingest_size, ingest_size, 3).

    Raises ImageRejected (with its reason code) if the file is not a usable image.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageRejected(UNREADABLE, f"cannot be read: {error.strerror or error}") from None
    return image_from_bytes(data, ingest_size, max_pixels)


def image_from_bytes(data: bytes, ingest_size: int, max_pixels: int) -> np.ndarray:
    """The encoded image (a file's bytes) decoded, cropped and resized as ingest does it: uint8
    (ingest_size, ingest_size, 3). Raises ImageRejected if the bytes are not a usable image."""
    return np.asarray(square_resize(decode_rgb(data, max_pixels), ingest_size))


def to_model_size(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 batch (n, s, s, 3) to (n, size, size, 3) as the training input pipeline
    does."""
    if images.shape[1:3] == (size, size):
        return images
    return resize_uint8(images, size).numpy()


def predict_files(
    model: keras.Model,
    paths: Sequence[Path],
    ingest_size: int,
    max_pixels: int,
    detector: UnfamiliarDetector | None = None,
) -> list[ImagePrediction]:
    """One ImagePrediction per path, in order; unusable files get an error, the rest are
    predicted in batches of BATCH_SIZE. With a detector, each also gets its unfamiliar score,
    from the same pass through the model."""

    def read(position: int) -> np.ndarray:
        return read_image(paths[position], ingest_size, max_pixels)

    return predict_images(model, [str(path) for path in paths], read, detector)


def predict_images(
    model: keras.Model,
    names: Sequence[str],
    read: Callable[[int], np.ndarray],
    detector: UnfamiliarDetector | None = None,
) -> list[ImagePrediction]:
    """predict_files for images named `names` that `read(position)` gives as the ingest stage
    writes them (uint8 (s, s, 3); ImageRejected if unusable): files, or uploads held in memory
    (melanoma.app), go through the same batching, scoring and unfamiliar score."""
    size = model_input_size(model)
    scorer = ImageScorer(model, detector)
    results: dict[int, ImagePrediction] = {}
    batches = _batches(list(range(len(names))), BATCH_SIZE)
    total = -(-len(names) // BATCH_SIZE)
    for batch in tqdm(
        batches, desc="predict", total=total, unit="batch", leave=False, disable=total < 2
    ):
        readable: list[tuple[int, np.ndarray]] = []
        for position in batch:
            try:
                readable.append((position, read(position)))
            except ImageRejected as rejected:
                log.warning("%s: %s (%s)", names[position], rejected, rejected.reason)
                results[position] = ImagePrediction(
                    names[position], reason=rejected.reason, error=str(rejected)
                )
        if not readable:
            continue
        images = to_model_size(np.stack([image for _, image in readable]), size)
        probabilities, features = scorer(images)
        scores = unfamiliar = None
        if detector is not None and features is not None:
            scores = detector.scores(features)
            unfamiliar = detector.is_unfamiliar(scores)
        for index, (position, _) in enumerate(readable):
            results[position] = ImagePrediction(
                names[position],
                probabilities=dict(zip(LABELS, map(float, probabilities[index]), strict=True)),
                unfamiliar_score=None if scores is None else float(scores[index]),
                unfamiliar=None if unfamiliar is None else bool(unfamiliar[index]),
                features=None if features is None else features[index],
            )
    return [results[position] for position in range(len(names))]


# The probe of each model, per depth: a caller that predicts one file at a time must not build
# (and trace) it again for every call.
_PROBES: "weakref.WeakKeyDictionary[keras.Model, dict[str, keras.Model]]" = (
    weakref.WeakKeyDictionary()
)


class ImageScorer:
    """uint8 images -> (class probabilities, the detector's features or None), in one model
    call (with views: the probabilities averaged over them, the features of the image itself)."""

    def __init__(self, model: keras.Model, detector: UnfamiliarDetector | None):
        self.with_features = detector is not None
        if detector is None:
            self.model = model
        else:
            by_depth = _PROBES.setdefault(model, {})
            if detector.depth not in by_depth:
                by_depth[detector.depth] = probe(model, detector.depth)
            self.model = by_depth[detector.depth]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.with_features:
            return np.asarray(self.model.predict_on_batch(images), dtype=np.float64), None
        probabilities, features = self.model.predict_on_batch(images)
        return np.asarray(probabilities, dtype=np.float64), np.asarray(features)


def predict_split(
    model: keras.Model, paths: Sequence[str], label_indices: np.ndarray, batch_size: int
) -> np.ndarray:
    """Class probabilities (n, 9) of manifest images, read by the training input pipeline."""
    dataset = make_dataset(list(paths), label_indices, model_input_size(model), batch_size)
    images_only = dataset.map(lambda images, _labels: images)
    return np.asarray(model.predict(images_only, verbose=0), dtype=np.float64)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
