"""The served model: image files in, answers out, through MLflow's own scoring server.

What the registry version points to is an MLflow pyfunc model logged by `log_served_model`
after evaluation: the Keras model file, the `melanoma` package (code_paths, so the server
decodes images with the very functions ingest and `melanoma predict` use), its config, which
holds the alert threshold chosen for it, and the files `train` keeps beside the model (the
unfamiliar-image detector, the drift reference). With `predict.views` above 1 the Keras file
is the model with its test-time views (melanoma.inference.views), the very graph evaluate chose
the threshold with; its layers are this package's, registered with Keras, so whatever loads
it imports `melanoma.inference.views` first (this module does, through melanoma.inference.predict).
The same MLmodel also has the `keras` flavor, reading the same file, so
`mlflow.keras.load_model` (predict, explain, the champion's re-scoring) works on it as on any
logged Keras model.

A request is one column, `image`, one row per image: the base64 of an image file (JPEG, PNG,
BMP, ...; decoded, centre-cropped and resized exactly as ingest does it), or the image as
S x S x 3 uint8 RGB values (S = the model's input size). One column of either kind is the only
schema that keeps the original `{"inputs": [pixel arrays]}` body working, so its type is Any.
A request may name a site (`"params": {"site": NAME}`): the alert is then raised at the
threshold `melanoma site calibrate` stored for it with this version, read from the registry,
and where the site's head was adopted (melanoma.sites.head), on the head's P(melanoma), from
the features the unfamiliar score computes anyway. The answer, per image: the nine
probabilities (the model's), the top label, P(melanoma) (the site head's, if any), the alert
at the version's own threshold (or the site's), and whether the image is unfamiliar. Every
image of a request goes through the model in one call of a `tf.function` traced once at load
(not `model.predict`, which builds an input pipeline per call).
"""

import base64
import binascii
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import (
    AnyType,
    ColSpec,
    DataType,
    Object,
    ParamSchema,
    ParamSpec,
    Property,
    Schema,
)

import melanoma
from melanoma.config import Params
from melanoma.data.images import ImageRejected, decode_rgb
from melanoma.errors import MelanomaError
from melanoma.inference.predict import (
    ARTIFACTS_DIR,
    UNREADABLE,
    image_from_bytes,
    model_input_size,
    to_model_size,
)
from melanoma.inference.unfamiliar import UNFAMILIAR_FILE_NAME, UnfamiliarDetector
from melanoma.inference.views import probe
from melanoma.labels import LABELS, MELANOMA
from melanoma.model.logged_model import model_requirements
from melanoma.registry.sites import SiteError, VersionSite, served_site, usable_site_head
from melanoma.sites.head import SiteHead, SiteHeadError

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
SITE_PARAM = "site"  # {"inputs": [...], "params": {"site": "clinic_a"}}: that site's threshold
SERVED_MODEL_ARTIFACT = "served_model"
KERAS_ARTIFACT = "keras_model"
UNFAMILIAR_ARTIFACT = Path(UNFAMILIAR_FILE_NAME).stem  # each stored file's artifact key is its stem
# pyfunc copies each artifact to artifacts/<file name>; the keras flavor reads <data>/model.keras.
KERAS_FILE = "model.keras"
# Reason codes of a refused request value, beside those of melanoma.data.images.
NOT_BASE64 = "not_base64"
TOO_LARGE = "too_large"
BAD_PIXELS = "bad_pixels"
NOT_AN_IMAGE_VALUE = "not_an_image_value"
MAX_PROBLEMS_LISTED = 10  # a batch of thousands of bad images gets a readable answer


@dataclass(frozen=True)
class ServingConfig:
    """What the served model needs besides its weights; logged as the pyfunc model_config."""

    melanoma_threshold: float
    ingest_size: int
    max_image_pixels: int
    max_images_per_request: int
    max_image_bytes: int


def serving_config(params: Params, threshold: float) -> ServingConfig:
    return ServingConfig(
        melanoma_threshold=threshold,
        ingest_size=params.ingest.image_size,
        max_image_pixels=params.ingest.max_image_pixels,
        max_images_per_request=params.serve.max_images_per_request,
        max_image_bytes=params.serve.max_image_bytes,
    )


class RequestRefused(MelanomaError, MlflowException):
    """A request the model does not answer (HTTP 400); the message names the problem and, in a
    batch, the index of each bad image."""

    def __init__(self, problem: str):
        super().__init__(problem, error_code=INVALID_PARAMETER_VALUE)
        self.problem = problem

    def serialize_as_json(self) -> str:
        # The scoring server prefixes the message with the whole parsed request (megabytes of
        # base64 for a batch of images): the answer keeps only the problem.
        return json.dumps({"error_code": self.error_code, "message": self.problem})


def request_image(value: object, config: ServingConfig, model_size: int) -> np.ndarray:
    """One value of the `image` column as a uint8 (model_size, model_size, 3) array: base64 (or
    the bytes) of an image file, or the pixels themselves. Raises ImageRejected saying why not."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ImageRejected(
                NOT_BASE64, "a string that is not base64 (the base64 of an image file is expected)"
            ) from None
    if isinstance(value, bytes):
        if len(value) > config.max_image_bytes:
            raise ImageRejected(
                TOO_LARGE,
                f"{len(value)} bytes, over the limit of {config.max_image_bytes} "
                "(serve.max_image_bytes)",
            )
        image = image_from_bytes(value, config.ingest_size, config.max_image_pixels)
        return to_model_size(image[np.newaxis], model_size)[0]
    if isinstance(value, list | np.ndarray):
        return _pixels(value, model_size)
    raise ImageRejected(
        NOT_AN_IMAGE_VALUE,
        f"a {type(value).__name__}, neither the base64 of an image file nor "
        f"{model_size} x {model_size} x 3 pixel values",
    )


def _pixels(value: list | np.ndarray, size: int) -> np.ndarray:
    try:
        pixels = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise ImageRejected(BAD_PIXELS, "pixel rows of unequal lengths") from None
    if pixels.shape != (size, size, 3):
        raise ImageRejected(
            BAD_PIXELS, f"pixels of shape {pixels.shape}, not ({size}, {size}, 3) RGB"
        )
    integral = pixels.dtype.kind in "iu" or (
        pixels.dtype.kind == "f" and np.array_equal(pixels, np.round(pixels))
    )
    if not integral or pixels.min() < 0 or pixels.max() > 255:
        raise ImageRejected(BAD_PIXELS, "pixel values that are not integers from 0 to 255")
    return pixels.astype(np.uint8)


def request_images(values: Sequence, config: ServingConfig, model_size: int) -> np.ndarray:
    """The images of a request as one uint8 batch; RequestRefused naming every bad image."""
    if len(values) == 0:
        raise RequestRefused(f"the request holds no image (an empty {IMAGE_COLUMN!r} list)")
    if len(values) > config.max_images_per_request:
        raise RequestRefused(
            f"{len(values)} images in one request, over the limit of "
            f"{config.max_images_per_request} (serve.max_images_per_request): split it"
        )
    images, problems = [], []
    for index, value in enumerate(values):
        try:
            images.append(request_image(value, config, model_size))
        except ImageRejected as rejected:
            problems.append(f"image {index}: {rejected} ({rejected.reason})")
    if problems:
        listed = "; ".join(problems[:MAX_PROBLEMS_LISTED])
        more = len(problems) - MAX_PROBLEMS_LISTED
        raise RequestRefused(
            f"{len(problems)} of {len(values)} images refused, none predicted: {listed}"
            + (f"; and {more} more" if more > 0 else "")
        )
    return np.stack(images)


def answers(
    probabilities: np.ndarray,
    threshold: float,
    unfamiliar_scores: np.ndarray,
    detector: UnfamiliarDetector,
    site: str | None = None,
    site_melanoma: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per image: top label, P(melanoma) (`site_melanoma`, the site head's, if given),
    the alert at `threshold` (the site's, if one is named), the threshold, the site, the nine
    probabilities by label, and whether the image is unfamiliar, with its score."""
    melanoma = probabilities[:, LABELS.index(MELANOMA)] if site_melanoma is None else site_melanoma
    return pd.DataFrame(
        {
            "top_label": [LABELS[i] for i in probabilities.argmax(axis=1)],
            "melanoma_probability": melanoma,
            "melanoma_alert": melanoma >= threshold,
            "melanoma_threshold": threshold,
            "site": site,
            "probabilities": [
                dict(zip(LABELS, map(float, row), strict=True)) for row in probabilities
            ],
            "unfamiliar": detector.is_unfamiliar(unfamiliar_scores),
            "unfamiliar_score": unfamiliar_scores,
        }
    )


def _request_values(model_input: pd.DataFrame | list) -> list:
    """The `image` values of what the scoring server passes (after schema enforcement)."""
    if isinstance(model_input, pd.DataFrame):
        values = model_input[IMAGE_COLUMN].tolist() if IMAGE_COLUMN in model_input else []
    else:
        values = list(model_input)
    # MLflow turns `{"inputs": [...]}` of strings only (or no value) into a single row holding
    # the list; a row of pixels holds lists of numbers, never of strings.
    if (
        len(values) == 1
        and isinstance(values[0], list)
        and all(isinstance(item, str) for item in values[0])
    ):
        return values[0]
    return values


# MLflow warns, when a PythonModel subclass is defined, that predict has no type hints (typed,
# the server would no longer parse the dataframe formats); it resets the warning filters to do
# so, so only recording keeps `melanoma request`, which imports this module, free of it.
with warnings.catch_warnings(record=True):

    class MelanomaServedModel(PythonModel):
        """The pyfunc model `mlflow models serve` runs (see the module docstring)."""

        def load_context(self, context) -> None:
            import tensorflow as tf

            self.config = ServingConfig(**context.model_config)
            # The run and logged model this is: a site's threshold is looked up by them in
            # the registry, at request time, so a site calibrated while serving is answered.
            self.logged = Model.load(Path(context.artifacts[KERAS_ARTIFACT]).parents[1])
            model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT])
            self.detector = UnfamiliarDetector.load(context.artifacts[UNFAMILIAR_ARTIFACT])
            self.model_size = model_input_size(model)
            shape = (None, self.model_size, self.model_size, 3)
            # Probabilities and the unfamiliar score's features in one pass. A fixed signature:
            # traced once, whatever the batch size, and safe to call from the server's request
            # threads at once.
            scorer = probe(model, self.detector.depth)
            self._outputs = tf.function(
                lambda images: scorer(images, training=False),
                input_signature=[tf.TensorSpec(shape, tf.uint8)],
            )
            self._outputs(np.zeros((1, *shape[1:]), np.uint8))
            # Each site head read once (by its checksum: a re-calibrated site's is read again).
            self._site_heads: dict[str, SiteHead | None] = {}

        def _site_head(self, site: VersionSite) -> SiteHead | None:
            key = site.record.head_sha256  # set when the head was adopted
            if not site.record.head_adopted or key is None:
                return None
            if key not in self._site_heads:
                self._site_heads[key] = usable_site_head(MlflowClient(), site, self.detector)
            return self._site_heads[key]

        def predict(self, context, model_input, params=None) -> pd.DataFrame:
            site = (params or {}).get(SITE_PARAM) or None
            threshold, head = self.config.melanoma_threshold, None
            if site is not None:
                try:
                    found = served_site(self.logged.run_id, self.logged.model_id, site)
                    head = self._site_head(found)
                except (SiteError, SiteHeadError) as error:
                    raise RequestRefused(str(error)) from None
                threshold = found.record.threshold
            images = request_images(_request_values(model_input), self.config, self.model_size)
            probabilities, features = (np.asarray(o) for o in self._outputs(images))
            probabilities = probabilities.astype(np.float64)
            site_melanoma = None
            if head is not None:
                site_melanoma = head.melanoma_probability(
                    features, probabilities[:, LABELS.index(MELANOMA)]
                )
            return answers(
                probabilities,
                threshold,
                self.detector.scores(features),
                self.detector,
                site,
                site_melanoma,
            )


def request_body(paths: Sequence[Path], max_pixels: int) -> dict[str, list[str]]:
    """The JSON body for the served model: {"inputs": [base64 of each file, as it is]}.

    Each file is decoded once here, so an unusable one is named now rather than refused by the
    server; raises ImageRejected naming the first."""
    encoded = []
    for path in paths:
        try:
            data = path.read_bytes()
            decode_rgb(data, max_pixels)
        except OSError as error:
            raise ImageRejected(UNREADABLE, f"{path}: cannot be read: {error}") from None
        except ImageRejected as rejected:
            raise ImageRejected(rejected.reason, f"{path}: {rejected}") from None
        encoded.append(base64.b64encode(data).decode("ascii"))
    return {"inputs": encoded}


def _signature() -> ModelSignature:
    probabilities = Object([Property(label, DataType.double) for label in LABELS])
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), IMAGE_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "top_label"),
                ColSpec(DataType.double, "melanoma_probability"),
                ColSpec(DataType.boolean, "melanoma_alert"),
                ColSpec(DataType.double, "melanoma_threshold"),
                ColSpec(DataType.string, "site", required=False),
                ColSpec(probabilities, "probabilities"),
                ColSpec(DataType.boolean, "unfamiliar"),
                ColSpec(DataType.double, "unfamiliar_score"),
            ]
        ),
        # "" is no site: the version's global threshold.
        params=ParamSchema([ParamSpec(SITE_PARAM, DataType.string, "")]),
    )


def _save_served_model(path: str, mlflow_model: Model, **kwargs) -> None:
    kwargs.pop("validate_serving_input", None)
    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)
    # The keras flavor reads <data>/model.keras when <data> is a folder: pyfunc's copy.
    mlflow_model.add_flavor(
        "keras",
        data=ARTIFACTS_DIR,
        keras_version=keras.__version__,
        keras_backend=keras.backend.backend(),
        save_exported_model=False,
    )
    mlflow_model.save(str(Path(path) / "MLmodel"))


# A pyfunc model that is also a Keras model; MLflow names the flavor after __name__.
_SERVED_FLAVOR = SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_served_model)


def log_served_model(
    model: keras.Model, config: ServingConfig, example_file: Path, stored_files: Sequence[Path]
) -> ModelInfo:
    """Log the served model into the active run, with the files `train` keeps beside the model
    (`stored_files`: the unfamiliar-image detector, the drift reference) in its artifacts;
    register the returned model_uri.

    Its input example holds both kinds of `image` value: the base64 of `example_file` and the
    same image as pixels."""
    size = model_input_size(model)
    data = example_file.read_bytes()
    pixels = to_model_size(
        image_from_bytes(data, config.ingest_size, config.max_image_pixels)[np.newaxis], size
    )[0]
    example = pd.DataFrame(
        {IMAGE_COLUMN: [base64.b64encode(data).decode("ascii"), pixels.tolist()]}
    )
    with tempfile.TemporaryDirectory(prefix="served-model-") as scratch:
        model_file = Path(scratch) / KERAS_FILE
        model.save(model_file)
        info = Model.log(
            artifact_path=None,
            name=SERVED_MODEL_ARTIFACT,
            flavor=_SERVED_FLAVOR,
            python_model=MelanomaServedModel(),
            artifacts={KERAS_ARTIFACT: str(model_file)} | {f.stem: str(f) for f in stored_files},
            code_paths=[str(Path(melanoma.__file__).parent)],
            model_config=asdict(config),
            signature=_signature(),
            input_example=example,
            pip_requirements=model_requirements(),
        )
    log.info(
        "logged the served model %s (alert threshold %s)", info.model_uri, config.melanoma_threshold
    )
    return info
