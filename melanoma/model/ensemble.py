"""An ensemble of seeds as one Keras model (`train.ensemble: k`).

`train` fits k members, each with its own seed (train.seed, train.seed + 1, ...), on the same
cached activations; `assemble` then builds one model: the frozen part of the network once
(the backbone up to where the members start: stage `features` computed exactly this), each
member's trained part on its output, the mean of the members' probabilities, and a last
softmax layer named like every model's (`probabilities`) holding the temperature:

    p = softmax(log(mean of the members' p) / T)

With T = 1 that is the mean itself; `melanoma.model.calibration.fold_temperature` divides that
layer's identity kernel by the T fitted once on the ensemble's validation probabilities, which
is `calibration.rescale` of the mean. Without cached activations (the whole network trains),
each member is a whole model and nothing is shared.

Only Keras layers and ops: the saved model loads without custom objects, and evaluate,
`melanoma predict`, the views of `predict.views` and the served model use it as any model.
"""

import keras
from keras import layers, ops

from melanoma.labels import LABELS
from melanoma.model.architectures import OUTPUT_NAME

MEAN_NAME = "ensemble_mean"
MEMBER_PREFIX = "member_"
# log(0) must not appear: a mean probability is never taken below this.
_FLOOR = 1e-12


def assemble(inputs, shared, members: list[keras.Model], name: str) -> keras.Model:
    """The model from `inputs` (uint8 images) to the calibrated mean of the members'
    probabilities, each member called on `shared`: the frozen part's output in the graph of
    `inputs`, or `inputs` themselves when the members are whole models."""
    if len(members) < 2:
        raise ValueError(f"an ensemble has at least 2 members, not {len(members)}")
    named = [
        keras.Model(member.inputs[0], member.outputs[0], name=f"{MEMBER_PREFIX}{index}")
        for index, member in enumerate(members)
    ]
    mean = layers.Average(name=MEAN_NAME)
    output = layers.Dense(
        len(LABELS),
        activation="softmax",
        dtype="float32",
        kernel_initializer="identity",
        bias_initializer="zeros",
        trainable=False,
        name=OUTPUT_NAME,
    )
    probabilities = _combine([member(shared) for member in named], mean, output)
    return keras.Model(inputs, probabilities, name=name)


def _combine(probabilities: list, mean: layers.Average, output: layers.Dense):
    return output(ops.log(ops.maximum(mean(probabilities), _FLOOR)))


def is_ensemble(model: keras.Model) -> bool:
    return any(layer.name == MEAN_NAME for layer in model.layers)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The members of an ensemble, in order (each: the shared part's output -> probabilities)."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)
    ]


def shared_part(model: keras.Model) -> keras.Model | None:
    """The frozen part every member takes its input from (the EfficientNet-Lite backbone, or
    its blocks below the members'), or None when the members are whole models."""
    return next(
        (
            layer
            for layer in model.layers
            if isinstance(layer, keras.Model) and not layer.name.startswith(MEMBER_PREFIX)
        ),
        None,
    )


def probe(model: keras.Model, depth: str | None) -> keras.Model:
    """uint8 images -> [the ensemble's probabilities, features] in one pass, as
    melanoma.inference.unfamiliar.probe: with `depth` a layer of the shared part, its output
    averaged over the image; with None, the pooled features of every member (the input of its
    softmax layer) side by side."""
    members, shared = members_of(model), shared_part(model)
    mean, output = model.get_layer(MEAN_NAME), model.get_layer(OUTPUT_NAME)
    # The shared part of an EfficientNet-Lite model takes the scaled pixels.
    x = model.inputs[0] if shared is None else model.get_layer("scale").output
    if depth is None:
        z = x if shared is None else shared(x)
        pairs = [
            keras.Model(m.inputs, [m.outputs[0], m.get_layer(OUTPUT_NAME).input])(z)
            for m in members
        ]
        probabilities = _combine([p for p, _ in pairs], mean, output)
        features = layers.Concatenate()([f for _, f in pairs])
        return keras.Model(model.inputs, [probabilities, features])
    if shared is None or depth not in {layer.name for layer in shared.layers}:
        raise ValueError(
            f"unfamiliar.depth: {depth} is not in the part the members of {model.name} share"
        )
    inside = layers.GlobalAveragePooling2D()(shared.get_layer(depth).output)
    z, features = keras.Model(shared.inputs, [shared.outputs[0], inside])(x)
    probabilities = _combine([m(z) for m in members], mean, output)
    return keras.Model(model.inputs, [probabilities, features])
