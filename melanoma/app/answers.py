"""What the clinic page shows, computed without the page: the registered version it serves, the
answer for each uploaded image, the batch table and the drift check's verdict.

One code path with `melanoma predict`: uploads are decoded by `image_from_bytes` (ingest's
decode, crop and resize), scored by `predict_images` (the batching, test-time views and
unfamiliar score of `predict_files`), explained by `heat_maps` (the maps of `predict
--explain`), and checked by the drift check of `melanoma site check`. Uploads stay in memory:
nothing here writes a file.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import keras
import matplotlib
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from melanoma.config import Params
from melanoma.data.images import ImageRejected
from melanoma.evaluation.explain import (
    COLOURMAP,
    OVERLAY_ALPHA,
    ExplainError,
    GradCam,
    grad_cam,
    heat_maps_of_classes,
    upsample,
)
from melanoma.inference.predict import (
    BATCH_SIZE,
    ImagePrediction,
    image_from_bytes,
    load_model_and_detector,
    model_input_size,
    model_location,
    predict_images,
    stored_file,
    to_model_size,
)
from melanoma.inference.unfamiliar import UnfamiliarDetector
from melanoma.inference.views import trained_model
from melanoma.labels import LABELS, MELANOMA, MELANOMA_INDEX
from melanoma.paths import DRIFT_REFERENCE_FILE
from melanoma.registry.promotion import tagged_threshold
from melanoma.registry.serving import TOO_LARGE
from melanoma.registry.sites import (
    SiteRecord,
    VersionSite,
    find_site,
    resolve_version,
    usable_site_head,
    version_sites,
)
from melanoma.reports import HEADLINE_METRICS
from melanoma.sites.batch_drift import check_predictions, compared_images
from melanoma.sites.drift import DriftReference
from melanoma.sites.head import SiteHead, with_site_head
from melanoma.tracking import configure_tracking

log = logging.getLogger(__name__)

# Reason code of an image past serve.max_images_per_request, beside predict's
# (melanoma.data.images) and TOO_LARGE.
TOO_MANY_IMAGES = "too_many_images"
# The drift check's two tests say little about a smaller batch: the page runs it from 30.
DRIFT_MIN_IMAGES = 30
TABLE_COLUMNS = (
    "file",
    "top label",
    "P(melanoma)",
    "alert",
    "unfamiliar",
    "not scored: reason",
)


@dataclass(frozen=True)
class Upload:
    """One uploaded file, held in memory."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ServedVersion:
    """The registered version the page answers with, and what the page says about it."""

    model_name: str
    version: str
    run_id: str | None  # the version's run, which stores its sites' heads
    registered_on: str  # the version's creation date, UTC
    model: keras.Model
    detector: UnfamiliarDetector | None
    explainer: GradCam | None  # None: the model has no convolutional block to explain
    global_threshold: float
    sites: dict[str, SiteRecord]
    drift_reference: DriftReference | None
    # headline figures from the version's card (its tags): {evaluation set: {metric: value}}
    figures: dict[str, dict[str, float]]

    @property
    def reference(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


@dataclass(frozen=True)
class Threshold:
    """The alert threshold in use, and whose it is (a site's, or None: the version's own);
    with the site's adopted head, the threshold applies to the head's P(melanoma)."""

    value: float
    site: str | None = None
    head: SiteHead | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        owner = f"site {self.site}" if self.site else "the model (global)"
        return f"the threshold of {owner}, {self.value:.4g}"


@dataclass(frozen=True)
class ImageAnswer:
    """predict's answer for one upload, its pixels as ingest writes them and its Grad-CAM
    overlays ({class: RGB image}: melanoma and the top class, as `predict --explain`)."""

    prediction: ImagePrediction
    pixels: np.ndarray | None = field(default=None, repr=False)
    overlays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.prediction.path


def load_version(params: Params, version: str | None = None) -> ServedVersion:
    """The version `version` of registry.model_name (None: the champion), loaded as
    `melanoma predict` loads it, with its detector, Grad-CAM, sites, drift reference and card
    figures. RegistryError, ModelLoadError, SiteError or DriftReferenceError say why not."""
    configure_tracking(params.mlflow)
    client, name = MlflowClient(), params.registry.model_name
    number = resolve_version(client, name, version)
    reference = f"models:/{name}/{number}"
    location = model_location(reference)  # downloaded once, read for the model and its files
    model, detector = load_model_and_detector(str(location), params.predict.views)
    drift_file = stored_file(location, DRIFT_REFERENCE_FILE.name)
    registered = client.get_model_version(name, number)
    return ServedVersion(
        model_name=name,
        version=number,
        run_id=registered.run_id,
        registered_on=_date(registered.creation_timestamp),
        model=model,
        detector=detector,
        explainer=explainer_of(model),
        global_threshold=tagged_threshold(registered),
        sites=version_sites(client, name, number),
        drift_reference=None if drift_file is None else DriftReference.load(drift_file),
        figures=card_figures(registered.tags),
    )


def _date(milliseconds: int | None) -> str:
    if milliseconds is None:
        return "unknown"
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d")


def explainer_of(model: keras.Model) -> GradCam | None:
    """Grad-CAM of the model as `predict --explain` makes it; None (logged) if it has none."""
    try:
        return grad_cam(trained_model(model))  # of the image itself, whatever the views
    except ExplainError as error:
        log.warning("no Grad-CAM overlays: %s", error)
        return None


def card_figures(tags: dict[str, str]) -> dict[str, dict[str, float]]:
    """The headline figures `register` tagged the version with (`<set>_<metric>`), by set."""
    figures: dict[str, dict[str, float]] = {}
    # The longest name first: test_balanced_accuracy is balanced_accuracy, not accuracy.
    metrics = sorted(HEADLINE_METRICS, key=len, reverse=True)
    for key, value in tags.items():
        metric = next((m for m in metrics if key.endswith(f"_{m}")), None)
        if metric is not None:
            figures.setdefault(key.removesuffix(f"_{metric}"), {})[metric] = float(value)
    return figures


def threshold_for(served: ServedVersion, site: str | None) -> Threshold:
    """The site's threshold and adopted head (as `melanoma predict --site` reads them), or the
    version's global threshold; SiteError naming the known sites, SiteHeadError naming a head
    that cannot be used with the version."""
    if site is None:
        return Threshold(served.global_threshold)
    record = find_site(served.model_name, served.version, served.sites, site)
    found = VersionSite(served.model_name, served.version, served.run_id, record)
    head = usable_site_head(MlflowClient(), found, served.detector)
    return Threshold(record.threshold, site, head)


def at_threshold(answers: Sequence[ImageAnswer], threshold: Threshold) -> list[ImageAnswer]:
    """The answers with the P(melanoma) the threshold applies to: the site head's, if the
    threshold's site has one (the same function as `melanoma predict --site`)."""
    if threshold.head is None:
        return list(answers)
    adapted = with_site_head([answer.prediction for answer in answers], threshold.head)
    return [
        replace(answer, prediction=prediction)
        for answer, prediction in zip(answers, adapted, strict=True)
    ]


def answer_uploads(
    served: ServedVersion, uploads: Sequence[Upload], params: Params, explain: bool = True
) -> list[ImageAnswer]:
    """One answer per upload, in order: predict's answer, or the reason it is not scored
    (predict's reason codes; the served model's limits: TOO_LARGE past serve.max_image_bytes,
    TOO_MANY_IMAGES past serve.max_images_per_request); with `explain`, the Grad-CAM overlays
    of the scored ones."""
    limits = params.serve
    pixels: dict[int, np.ndarray] = {}

    def read(position: int) -> np.ndarray:
        upload = uploads[position]
        if position >= limits.max_images_per_request:
            raise ImageRejected(
                TOO_MANY_IMAGES,
                f"past the limit of {limits.max_images_per_request} images per upload "
                "(serve.max_images_per_request)",
            )
        if len(upload.data) > limits.max_image_bytes:
            raise ImageRejected(
                TOO_LARGE,
                f"{len(upload.data)} bytes, over the limit of {limits.max_image_bytes} "
                "(serve.max_image_bytes)",
            )
        ingest = params.ingest
        image = image_from_bytes(upload.data, ingest.image_size, ingest.max_image_pixels)
        pixels[position] = image  # kept to show it, and for Grad-CAM, without decoding again
        return image

    names = [upload.name for upload in uploads]
    predictions = predict_images(served.model, names, read, served.detector)
    overlays: dict[int, dict[str, np.ndarray]] = {}
    if explain and served.explainer is not None:
        overlays = gradcam_overlays(served.explainer, predictions, pixels)
    return [
        ImageAnswer(prediction, pixels.get(position), overlays.get(position, {}))
        for position, prediction in enumerate(predictions)
    ]


def gradcam_overlays(
    explainer: GradCam, predictions: Sequence[ImagePrediction], pixels: dict[int, np.ndarray]
) -> dict[int, dict[str, np.ndarray]]:
    """{position: {class: overlay}} for melanoma and the top class of each scored image: the
    heat maps `predict --explain` draws (`heat_maps_of_classes`), over the ingest-size pixels."""
    size = model_input_size(explainer.features)
    scored = [n for n, prediction in enumerate(predictions) if prediction.ok]
    overlays: dict[int, dict[str, np.ndarray]] = {}
    for start in range(0, len(scored), BATCH_SIZE):
        batch = scored[start : start + BATCH_SIZE]
        images = to_model_size(np.stack([pixels[n] for n in batch]), size)
        top = [LABELS.index(predictions[n].top_label) for n in batch]
        classes = [[MELANOMA_INDEX] * len(batch), top]
        (melanoma_maps, top_maps), _ = heat_maps_of_classes(explainer, images, classes)
        for k, n in enumerate(batch):
            overlays[n] = {
                MELANOMA: overlay(pixels[n], melanoma_maps[k]),
                predictions[n].top_label: overlay(pixels[n], top_maps[k]),
            }
    return overlays


def overlay(image: np.ndarray, heat_map: np.ndarray) -> np.ndarray:
    """The heat map (blue 0 to red 1) over the uint8 RGB image, as `predict --explain` draws
    it: its colour map at its opacity."""
    colours = matplotlib.colormaps[COLOURMAP](upsample(heat_map, image.shape[0]))[..., :3]
    blended = (1 - OVERLAY_ALPHA) * image / 255 + OVERLAY_ALPHA * colours
    return np.round(blended * 255).astype(np.uint8)


def verdict(prediction: ImagePrediction, threshold: Threshold) -> str:
    """The answer in words: the alert or not, at which threshold; unfamiliar first."""
    probability = prediction.melanoma_probability
    if prediction.melanoma_alert(threshold.value):
        answer = f"MELANOMA ALERT: P(melanoma) {probability:.3f} >= {threshold.describe()}"
    else:
        answer = f"No melanoma alert: P(melanoma) {probability:.3f} < {threshold.describe()}"
    if prediction.unfamiliar:
        return f"UNFAMILIAR image, answer not to be trusted. {answer}"
    return answer


def batch_table(answers: Sequence[ImageAnswer], threshold: Threshold) -> pd.DataFrame:
    """One row per upload (TABLE_COLUMNS), in upload order."""
    rows = []
    for answer in answers:
        prediction = answer.prediction
        row: tuple[str, str, float | None, bool | None, bool | None, str]
        if prediction.ok:
            row = (
                answer.name,
                prediction.top_label,
                round(prediction.melanoma_probability, 6),
                prediction.melanoma_alert(threshold.value),
                prediction.unfamiliar,
                "",
            )
        else:
            row = (answer.name, "", None, None, None, f"{prediction.reason}: {prediction.error}")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def table_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def drift_verdict(
    served: ServedVersion, answers: Sequence[ImageAnswer], params: Params
) -> str | None:
    """The drift check's verdict on the batch (`melanoma site check`'s line), if it has at
    least DRIFT_MIN_IMAGES compared images and the version a drift reference; else None."""
    predictions = [answer.prediction for answer in answers]
    if served.drift_reference is None or len(compared_images(predictions)) < DRIFT_MIN_IMAGES:
        return None
    result = check_predictions(
        served.drift_reference,
        predictions,
        params.sites.drift_alpha,
        params.sites.drift_permutations,
    )
    return result.verdict(f"the validation split of {served.model_name} v{served.version}")
