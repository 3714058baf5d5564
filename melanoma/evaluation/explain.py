"""Grad-CAM: where in an image the model found its evidence for a class.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the last convolutional block's output
by the mean gradient of a class probability with respect to it, sums the channels and keeps the
positive part: a coarse map (the block's resolution, e.g. 4 x 4 for the resnet at 64 px) of the
places that raise that probability, scaled here to [0, 1] per image and upsampled onto the image.

The block is found generically, so that every architecture, a model loaded from the registry,
and architectures added later are covered: the input of the last global pooling layer
(searched from the output backwards, descending into nested sub-models such as the
keras.applications backbones), or failing that the last layer with a 4-D output. The model is
then split there into `features` (images -> block output) and `head` (block output ->
probabilities), so the gradient can be taken with respect to the block output itself.

An ensemble (melanoma.model.ensemble) is split at each member's last block: `features` gives
the k block outputs, `head` maps them through the members' tops, the mean and the calibration
to the ensemble's own probabilities. Its map is Grad-CAM's sum taken over the channels of every
member's block, so it is the map of the ensemble's answer: with k identical members, the
single model's map (the gradient with respect to each copy is 1/k of the single one's).
"""

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image

from melanoma.data.images import ImageRejected
from melanoma.errors import MelanomaError
from melanoma.inference.predict import (
    BATCH_SIZE,
    ImagePrediction,
    model_input_size,
    read_image,
    to_model_size,
)
from melanoma.labels import LABELS, MELANOMA, MELANOMA_INDEX
from melanoma.model.ensemble import is_ensemble, members_of

log = logging.getLogger(__name__)

POOLING_LAYERS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
OVERLAY_SUFFIX = "_gradcam.png"
OVERLAY_ALPHA = 0.45  # enough heat to read the map, enough image to see the lesion through it
COLOURMAP = "jet"
FALSE_ALARMS_IN_GALLERY = 8
GALLERY_COLUMNS = 6


class ExplainError(MelanomaError):
    """No heat map can be made (no 4-D layer, output folder not writable); the message says
    what and where."""


@dataclass(frozen=True)
class GradCam:
    """A model split at its last convolutional block (an ensemble: at each member's).

    features: uint8 images -> the block outputs, (n, h, w, channels) each: one, or one per
        member of an ensemble (the members share the architecture, so h and w too).
    head: the block outputs -> class probabilities (n, 9); head(features(x)) == model(x).
    layer: where the block outputs come from, as "outer/inner/layer" names; for an ensemble
        "outer/member_0..member_<k-1>/inner/layer", with member 0's names.
    """

    features: keras.Model
    head: keras.Model
    layer: str


@dataclass(frozen=True)
class _Target:
    chain: tuple[keras.Model, ...]  # nested models from the outer one down to the tensor's graph
    tensor: object  # the symbolic block output, in the graph of chain[-1] (or the outer model)
    name: str


def grad_cam(model: keras.Model) -> GradCam:
    """Split `model` at its last convolutional block, an ensemble at each member's. Raises
    ExplainError if it has none or cannot be split there."""
    targets, name = _find_targets(model)
    try:
        features, head = _split(model, targets)
    except ValueError as error:  # Keras' "graph disconnected" and the like
        raise ExplainError(f"model {model.name} cannot be split at {name}: {error}") from None
    log.debug("Grad-CAM on %s, %s", name, [block.shape for block in features.outputs])
    return GradCam(features, head, name)


def _find_targets(model: keras.Model) -> tuple[list[_Target], str]:
    """The blocks to split `model` at, and their description. An ensemble's members each have
    their own last block when they hold convolutions (whole models, or the top blocks of a
    backbone they share the rest of); members that are classifiers alone (`freeze: all`) leave
    the last block in the shared part, where it is the model's one block as for any model."""
    if is_ensemble(model):
        members = members_of(model)
        found = [found for member in members if (found := _find_target(member)) is not None]
        if len(found) == len(members):
            targets = [
                _Target((member, *target.chain), target.tensor, target.name)
                for member, target in zip(members, found, strict=True)
            ]
            # The members share the architecture: member 0's names say where, for all of them.
            _, inside = found[0].name.split("/", 1)
            return targets, f"{model.name}/{members[0].name}..{members[-1].name}/{inside}"
    target = _find_target(model)
    if target is None:
        raise ExplainError(f"model {model.name} has no layer with a 4-D output to explain")
    return [target], target.name


def _find_target(model: keras.Model, prefix: str = "") -> _Target | None:
    """The tensor the last global pooling layer pools, else the last 4-D layer output."""
    name = f"{prefix}{model.name}/"
    # Functional models list their layers in topological order: the last one first here.
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            inner = _find_target(layer, name)
            if inner is not None:
                return _Target((layer, *inner.chain), inner.tensor, inner.name)
        if isinstance(layer, POOLING_LAYERS):
            return _Target((), layer.input, name + _producer(model, layer.input, layer))
    for layer in reversed(model.layers):
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4:
            return _Target((), layer.output, f"{name}{layer.name}")
    return None


def _producer(model: keras.Model, tensor, pooling: keras.layers.Layer) -> str:
    for layer in model.layers:
        if layer.output is tensor:
            return layer.name
    # An operation that is not a layer (keras.ops on symbolic tensors) made the tensor.
    return f"input of {pooling.name}"


def _split(model: keras.Model, targets: Sequence[_Target]) -> tuple[keras.Model, keras.Model]:
    """(images -> the block outputs, the block outputs -> the model's output): at one tensor
    of the model's own graph, or at tensors inside its nested models, one per nested model."""
    # The one input bare (the model contract), even where the model was built on a list of
    # one: Keras warns at every call whose inputs do not have the structure built on.
    images = model.inputs[0]
    if len(targets) == 1 and not targets[0].chain:
        # A list of block outputs for a single model as for an ensemble, so that one head call
        # takes either (Keras returns a model's only output bare, and takes it so).
        blocks = [targets[0].tensor]
        return keras.Model(images, blocks), keras.Model(blocks, model.output)
    # The block outputs live inside nested models, where the outer graph cannot reach them.
    # Rebuild the outer graph (same layers, so same weights) with each of those models replaced
    # by its own two halves: its block output then becomes a tensor of the outer graph.
    halves = {
        target.chain[0]: _split(
            target.chain[0], [_Target(target.chain[1:], target.tensor, target.name)]
        )
        for target in targets
    }
    blocks = []

    def call(layer, *args, **kwargs):
        if layer not in halves:
            return layer(*args, **kwargs)
        features, head = halves[layer]
        block = keras.tree.flatten(features(*args, **kwargs))
        blocks.extend(block)
        return head(block)

    # clone_function returns each layer itself: shared, not copied, weights.
    rebuilt = keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call
    )
    return keras.Model(rebuilt.inputs[0], blocks), keras.Model(blocks, rebuilt.output)


def heat_maps(
    explainer: GradCam, images: np.ndarray, class_indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(Grad-CAM maps (n, h, w) in [0, 1], probabilities (n, 9)) of uint8 model-size images,
    each map for the class index given for its image.

    A map is all zeros when nothing in the block raises that class's probability.
    """
    (maps,), probabilities = heat_maps_of_classes(explainer, images, [class_indices])
    return maps, probabilities


def heat_maps_of_classes(
    explainer: GradCam, images: np.ndarray, class_lists: Sequence[Sequence[int]]
) -> tuple[list[np.ndarray], np.ndarray]:
    """heat_maps for several classes of each image (one list of class indices per map wanted,
    e.g. melanoma and the top class) from one pass through the network: ([maps (n, h, w) per
    list], probabilities (n, 9)). The pass is most of the cost; each list adds a gradient."""
    # A list either way: Keras returns a model's only output bare.
    blocks = keras.tree.flatten(explainer.features(images, training=False))
    with tf.GradientTape(persistent=len(class_lists) > 1) as tape:
        # Watched explicitly: with frozen weights, or no weights before the block, the tape
        # would otherwise not record the head.
        tape.watch(blocks)
        probabilities = explainer.head(blocks, training=False)
        # Images do not interact at inference, so the gradient of the sum is each image's own.
        scores = [
            tf.reduce_sum(
                tf.gather(
                    probabilities,
                    tf.constant(list(indices), dtype=tf.int32)[:, None],
                    axis=1,
                    batch_dims=1,
                )
            )
            for indices in class_lists
        ]
    maps = [_normalised_map(tape.gradient(score, blocks), blocks) for score in scores]
    return maps, np.asarray(probabilities, dtype=np.float64)


def _normalised_map(gradients, blocks) -> np.ndarray:
    """Grad-CAM's map of each image, scaled to [0, 1] by its own peak (all zeros if none)."""
    # An ensemble's channels are those of all its members' blocks: one sum over all of them.
    weighted = [_weighted_channels(g, b) for g, b in zip(gradients, blocks, strict=True)]
    maps = tf.nn.relu(tf.add_n(weighted)).numpy()
    peaks = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)


def _weighted_channels(gradient, block) -> tf.Tensor:
    """Grad-CAM's sum of a block's channels (n, h, w, c), each weighted by the mean gradient
    of the class probability with respect to it: (n, h, w)."""
    weights = tf.reduce_mean(tf.cast(gradient, tf.float32), axis=(1, 2), keepdims=True)
    return tf.reduce_sum(weights * tf.cast(block, tf.float32), axis=-1)


def upsample(heat_map: np.ndarray, size: int) -> np.ndarray:
    """A (h, w) map resized (bilinear) to (size, size), to lie over an image of that side."""
    resized = tf.image.resize(heat_map[..., None].astype(np.float32), [size, size])
    return np.clip(resized.numpy()[..., 0], 0, 1)


def check_output_dir(path: Path) -> Path:
    """Create the folder if needed and prove a file can be written in it, before any work.

    Raises ExplainError naming the folder. A real write rather than a permission check, so
    that whatever would stop the overlays (permissions, a read-only mount, a file where the
    folder should be) stops the command here.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A uniquely named probe, deleted on close: no file of the user's is touched.
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ExplainError(
            f"--explain {path}: cannot write there ({error.strerror or error})"
        ) from None
    return path


def overlay_paths(images: Sequence[str | Path], output_dir: Path) -> list[Path]:
    """<stem>_gradcam.png per image in output_dir; a stem already used (a.jpg and a.png, or the
    same name in two folders) gets _2, _3, ... in the order given, so no overlay overwrites
    another."""
    used: set[str] = set()
    paths = []
    for image in images:
        stem, name, n = Path(image).stem, Path(image).stem, 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        paths.append(output_dir / f"{name}{OVERLAY_SUFFIX}")
    return paths


def write_overlays(
    explainer: GradCam,
    predictions: Sequence[ImagePrediction],
    ingest_size: int,
    max_pixels: int,
    threshold: float,
    output_dir: Path,
) -> list[str | None]:
    """For each predicted image, an overlay PNG in output_dir (plot_explanation); its path, in
    the order of `predictions`. None for a failed prediction, or an image that cannot be read
    again or whose overlay cannot be written (logged); the others go on."""
    size = model_input_size(explainer.features)
    targets = overlay_paths([p.path for p in predictions], output_dir)
    written: list[str | None] = [None] * len(predictions)
    todo = [n for n, prediction in enumerate(predictions) if prediction.ok]
    for start in range(0, len(todo), BATCH_SIZE):
        batch, images = [], []
        for n in todo[start : start + BATCH_SIZE]:
            try:
                images.append(read_image(Path(predictions[n].path), ingest_size, max_pixels))
                batch.append(n)
            except ImageRejected as rejected:
                log.error("%s: no overlay: %s (%s)", predictions[n].path, rejected, rejected.reason)
        if not batch:
            continue
        pixels = np.stack(images)
        model_images = to_model_size(pixels, size)
        top = [LABELS.index(predictions[n].top_label) for n in batch]
        classes = [[MELANOMA_INDEX] * len(batch), top]
        (melanoma_maps, top_maps), _ = heat_maps_of_classes(explainer, model_images, classes)
        for k, n in enumerate(batch):
            prediction = predictions[n]
            maps = {MELANOMA: melanoma_maps[k], prediction.top_label: top_maps[k]}
            try:
                title = f"{Path(prediction.path).name}  (heat maps of {explainer.layer})"
                plot_explanation(
                    pixels[k], prediction.answered_probabilities, maps, threshold, targets[n], title
                )
            except OSError as error:
                log.error("%s: overlay %s not written: %s", prediction.path, targets[n], error)
                continue
            written[n] = str(targets[n])
    return written


def plot_explanation(
    image: np.ndarray,
    probabilities: dict[str, float],
    maps: dict[str, np.ndarray],
    threshold: float,
    path: Path,
    title: str,
) -> None:
    """One PNG: the plain image, its heat map for each class of `maps` over it (blue 0 to red
    1, the image's own maximum), and the nine probabilities with the alert threshold."""
    figure = Figure(figsize=(4 * (len(maps) + 2), 4.2))
    panels = figure.subplots(1, len(maps) + 2)
    _show(panels[0], image, None, "image")
    for axes, (label, heat_map) in zip(panels[1:], maps.items(), strict=False):
        _show(axes, image, heat_map, f"Grad-CAM: {label}\nP = {probabilities[label]:.3f}")
    _plot_probabilities(panels[-1], probabilities, threshold)
    alert = probabilities[MELANOMA] >= threshold
    verdict = (
        f"MELANOMA ALERT (P >= {threshold:.4g})" if alert else f"no alert (P < {threshold:.4g})"
    )
    figure.suptitle(f"{title}\n{verdict}", color="firebrick" if alert else "black")
    _save(figure, path)


def _show(axes, image: np.ndarray, heat_map: np.ndarray | None, title: str) -> None:
    axes.imshow(image)
    if heat_map is not None:
        axes.imshow(
            upsample(heat_map, image.shape[0]), cmap=COLOURMAP, alpha=OVERLAY_ALPHA, vmin=0, vmax=1
        )
    axes.set_title(title, fontsize=10)
    axes.axis("off")


def _plot_probabilities(axes, probabilities: dict[str, float], threshold: float) -> None:
    labels = list(probabilities)
    colours = ["firebrick" if label == MELANOMA else "steelblue" for label in labels]
    axes.barh(labels, [probabilities[label] for label in labels], color=colours)
    axes.axvline(
        threshold, color="firebrick", linestyle=":", label=f"alert threshold {threshold:.4g}"
    )
    axes.set_xlim(0, 1)
    axes.invert_yaxis()  # LABELS order, top to bottom
    axes.tick_params(labelsize=8)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("probabilities", fontsize=10)


def gallery_cases(
    label_indices: np.ndarray, probabilities: np.ndarray, threshold: float, false_alarms: int
) -> list[tuple[int, str]]:
    """(row index, "found" | "missed" | "false alarm") of the gallery: every melanoma, highest
    P(melanoma) first, then the `false_alarms` other images with the highest P(melanoma) at or
    above the threshold."""
    scores = probabilities[:, MELANOMA_INDEX]
    order = np.argsort(-scores, kind="stable")
    melanomas = [int(n) for n in order if label_indices[n] == MELANOMA_INDEX]
    alarms = [
        int(n) for n in order if label_indices[n] != MELANOMA_INDEX and scores[n] >= threshold
    ]
    return [(n, "found" if scores[n] >= threshold else "missed") for n in melanomas] + [
        (n, "false alarm") for n in alarms[:false_alarms]
    ]


def write_gallery(
    model: keras.Model,
    paths: Sequence[str],
    label_indices: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    output: Path,
    false_alarms: int = FALSE_ALARMS_IN_GALLERY,
) -> list[tuple[int, str]]:
    """reports/melanoma_gallery.png: the melanoma heat map over each image of gallery_cases
    (test images as the ingest stage wrote them, labels, probabilities as evaluate computed
    them). Returns the cases drawn."""
    cases = gallery_cases(label_indices, probabilities, threshold, false_alarms)
    columns = max(1, min(GALLERY_COLUMNS, len(cases)))
    rows = max(1, -(-len(cases) // columns))
    figure = Figure(figsize=(2.6 * columns, 2.9 * rows + 0.6))
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for axes in panels:
        axes.axis("off")
    if cases:
        explainer = grad_cam(model)
        size = model_input_size(model)
        images = [np.asarray(Image.open(paths[n]).convert("RGB")) for n, _ in cases]
        model_images = np.stack([to_model_size(image[None], size)[0] for image in images])
        maps = _melanoma_maps(explainer, model_images)
        for axes, image, heat_map, (n, kind) in zip(panels, images, maps, cases, strict=False):
            label = LABELS[label_indices[n]]
            title = f"{kind}: {label}\nP(melanoma) {probabilities[n, MELANOMA_INDEX]:.2f}"
            _show(axes, image, heat_map, title)
            axes.title.set_color("firebrick" if kind != "found" else "darkgreen")
    else:
        panels[0].text(0.5, 0.5, "no test melanoma and no false alarm", ha="center")
    melanomas = sum(kind != "false alarm" for _, kind in cases)
    found = sum(kind == "found" for _, kind in cases)
    figure.suptitle(
        f"Test melanomas ({found} of {melanomas} found) and the highest-scoring false alarms; "
        f"alert at P(melanoma) >= {threshold:.4g}; Grad-CAM of P(melanoma)"
    )
    _save(figure, output)
    log.info("wrote %s: %d images", output, len(cases))
    return cases


def _melanoma_maps(explainer: GradCam, images: np.ndarray) -> np.ndarray:
    batches = [images[start : start + BATCH_SIZE] for start in range(0, len(images), BATCH_SIZE)]
    return np.concatenate(
        [heat_maps(explainer, batch, [MELANOMA_INDEX] * len(batch))[0] for batch in batches]
    )


def _save(figure: Figure, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
