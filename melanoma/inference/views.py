"""Test-time views (`predict.views`): a model whose probabilities for an image are the mean of
the trained model's probabilities over exact views of it (mirrors and quarter turns of the
square image; no pixel is interpolated).

`predict.views: v` averages the first v of VIEWS, the order `train.views` caches them in
(melanoma.model.features.VIEWS): 1 the image itself, 2 + its mirror, 4 + the vertical flip and
the half turn, 8 + the quarter turns and the two transposes (the whole dihedral group). Each of
2, 4 and 8 is a group, so the mean is the same for any view of the image.

The views are part of the model's graph (`with_views`): the v views of a batch go through the
trained model as one batch of v x n images, and the v answers of each image are averaged. So
the model evaluate scores with, the one `melanoma predict` runs and the served model's Keras
file are one and the same graph. With views 1 the trained model is used as it is.

The unfamiliar-image score and the drift check's embedding look at the features of the image
itself (the first view) only: `probe` gives the averaged probabilities and those features in
one pass, and the detector fitted by `train` on unaltered images stays valid.
"""

import keras
from keras import layers, ops

from melanoma.inference.unfamiliar import probe as identity_probe

PACKAGE = "melanoma"
# (quarter turns counter-clockwise, then mirror left-right), as melanoma.model.features.VIEWS.
VIEWS = ((0, False), (0, True), (2, True), (2, False), (1, False), (3, False), (1, True), (3, True))
ALLOWED = (1, 2, 4, 8)


def dihedral_view(images, view: int):
    """View `view` (an index of VIEWS) of a batch of square images (n, s, s, c)."""
    quarter_turns, mirror = VIEWS[view]
    if quarter_turns:
        images = ops.rot90(images, k=quarter_turns, axes=(1, 2))
    return ops.flip(images, axis=2) if mirror else images


def _check(views: int) -> int:
    if views not in ALLOWED:
        raise ValueError(f"predict.views={views}: one of {list(ALLOWED)}")
    return int(views)


class _ViewsLayer(layers.Layer):
    """A layer that knows how many views its batch rows stack; the batch size is free."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = _check(views)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DihedralViews(_ViewsLayer):
    """(n, s, s, c) -> (views * n, s, s, c): the first `views` of VIEWS, view after view."""

    def call(self, images):
        return ops.concatenate([dihedral_view(images, v) for v in range(self.views)], axis=0)

    def compute_output_spec(self, images):
        return keras.KerasTensor((None, *images.shape[1:]), dtype=images.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViewMean(_ViewsLayer):
    """(views * n, ...) as DihedralViews stacks them -> (n, ...): the mean over the views."""

    def call(self, rows):
        return ops.mean(ops.reshape(rows, (self.views, -1, *rows.shape[1:])), axis=0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FirstView(ViewMean):
    """(views * n, ...) as DihedralViews stacks them -> (n, ...): the rows of the image itself."""

    def call(self, rows):
        return rows[: ops.shape(rows)[0] // self.views]


def with_views(model: keras.Model, views: int) -> keras.Model:
    """The model averaging `model`'s probabilities over `views` views; `model` itself for 1.
    `model` is a trained model (uint8 images in, probabilities out), not one with views."""
    views = _check(views)
    if views_of(model) != 1:
        raise ValueError(f"model {model.name} already averages {views_of(model)} views")
    if views == 1:
        return model
    inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="images")
    probabilities = ViewMean(views, name="view_mean")(model(DihedralViews(views)(inputs)))
    return keras.Model(inputs, probabilities, name=f"{model.name}_views{views}")


def carrying_views(model: keras.Model, views: int) -> keras.Model:
    """A model that carries its views (a registered version: its threshold was chosen on them)
    as it is; a trained model with `views` views (`with_views`)."""
    return model if views_of(model) != 1 else with_views(model, views)


def _views_layer(model: keras.Model) -> DihedralViews | None:
    return next((layer for layer in model.layers if isinstance(layer, DihedralViews)), None)


def views_of(model: keras.Model) -> int:
    """How many views `model` averages (1: a trained model as it is)."""
    layer = _views_layer(model)
    return 1 if layer is None else layer.views


def trained_model(model: keras.Model) -> keras.Model:
    """The trained model inside a model with views (the model itself without): what Grad-CAM
    explains, on the image itself."""
    if _views_layer(model) is None:
        return model
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def probe(model: keras.Model, depth: str) -> keras.Model:
    """uint8 images -> [probabilities, the pooled features at `depth`] in one pass, as
    melanoma.inference.unfamiliar.probe, for a model with or without views: the probabilities
    averaged over the views, the features of the image itself (the first view)."""
    views = views_of(model)
    inner = identity_probe(trained_model(model), depth)
    if views == 1:
        return inner
    inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="images")
    probabilities, features = inner(DihedralViews(views)(inputs))
    return keras.Model(inputs, [ViewMean(views)(probabilities), FirstView(views)(features)])
