"""How the model is optimized: each training image's weight (class weights, sources
weighed alike), the learning-rate schedule, the optimizer, with a rate of its own for the
backbone when fine-tuning (BackboneRate), and the compiled loss and metric.
"""

import keras
import numpy as np
import pandas as pd
from keras.optimizers.schedules import LearningRateSchedule

from melanoma.labels import LABELS
from melanoma.params.model import TrainParams


def class_weight_map(label_indices: np.ndarray, params: TrainParams) -> dict[int, float] | None:
    """Keras `class_weight`, or None when every class weighs 1.

    With `class_weights` on, a class weighs n_images / (n_classes_present * n_images_of_class);
    an entry of `class_weight_overrides` then replaces the weight of its label.
    """
    if not params.class_weights and not params.class_weight_overrides:
        return None
    counts = np.bincount(label_indices, minlength=len(LABELS))
    present = int(np.count_nonzero(counts))
    weights = {}
    for index, label in enumerate(LABELS):
        balanced = len(label_indices) / (present * counts[index]) if counts[index] else 1.0
        default = balanced if params.class_weights else 1.0
        weights[index] = float(params.class_weight_overrides.get(label, default))
    return weights


def sample_weights(
    label_indices: np.ndarray, sources: np.ndarray, params: TrainParams
) -> np.ndarray | None:
    """Each training image's weight, or None when every image weighs 1: its class weight
    (class_weight_map) times, with `source_weighting: equal_per_class`, n_class /
    (sources_in_class * n_class_of_its_source), so that within a class each source's images
    weigh alike in total (and the class as much as before); times its source's factor in
    `source_weights`."""
    classes = class_weight_map(label_indices, params)
    if classes is None and params.source_weighting == "none" and not params.source_weights:
        return None
    weights = np.ones(len(label_indices))
    if classes is not None:
        weights *= np.array([classes[int(i)] for i in label_indices])
    if params.source_weighting == "equal_per_class":
        rows = pd.DataFrame({"label": label_indices, "source": sources})
        per_source = rows.groupby(["label", "source"])["label"].transform("size")
        per_class = rows.groupby("label")["label"].transform("size")
        sources_in_class = rows.groupby("label")["source"].transform("nunique")
        weights *= (per_class / (sources_in_class * per_source)).to_numpy()
    weights *= np.array([params.source_weights.get(source, 1.0) for source in sources])
    return weights.astype(np.float32)


def learning_rate(params: TrainParams, steps_per_epoch: int) -> float | LearningRateSchedule:
    """The constant starting rate (lr_schedule=plateau: ReduceLROnPlateau lowers it), or a
    per-step cosine decay to zero over the whole run, after `warmup_epochs` of linear warm-up."""
    if params.lr_schedule == "plateau":
        return params.learning_rate
    warmup_steps = params.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else params.learning_rate,
        decay_steps=params.epochs * steps_per_epoch - warmup_steps,
        warmup_target=params.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(
    params: TrainParams, steps_per_epoch: int, backbone_variables: list | tuple = ()
) -> keras.optimizers.Optimizer:
    """The optimizer of params; weight decay is decoupled (AdamW-style) for all three.

    sgd uses Nesterov momentum 0.9: plain SGD is too slow to be a useful choice.
    With `backbone_variables` and a `backbone_learning_rate` other than `learning_rate`, those
    variables step (and decay) at backbone_learning_rate / learning_rate of the rate, schedule
    included: fine-tuning must not wash out the pretrained features.
    """
    rate = learning_rate(params, steps_per_epoch)
    if params.optimizer == "adam":
        cls, kwargs = keras.optimizers.Adam, {"weight_decay": params.weight_decay or None}
    elif params.optimizer == "adamw":
        cls, kwargs = keras.optimizers.AdamW, {"weight_decay": params.weight_decay}
    else:
        cls = keras.optimizers.SGD
        kwargs = {"momentum": 0.9, "nesterov": True, "weight_decay": params.weight_decay or None}
    factor = (params.backbone_learning_rate or params.learning_rate) / params.learning_rate
    if factor == 1.0 or not backbone_variables:
        return cls(rate, **kwargs)
    return _with_backbone_rate(cls)(rate, backbone_variables, factor, **kwargs)


class BackboneRate(keras.optimizers.Optimizer):
    """Mixin for a Keras optimizer class (placed before it in the bases, as
    `_with_backbone_rate` does): the given backbone variables step at `factor` times the rate.

    Keras has no per-variable learning rate; its update_step receives the rate for each
    variable, so the mixin scales it there, and does the backbone's decoupled weight decay
    itself at the same scale. A model compiled with it is saved through
    `melanoma.training.fitting.inference_copy`.
    """

    def __init__(self, rate, backbone_variables, factor, **kwargs):
        super().__init__(rate, **kwargs)
        self._backbone_factor = factor
        self._backbone_keys = {self._var_key(v) for v in backbone_variables}

    def _is_backbone(self, variable) -> bool:
        return self._var_key(variable) in self._backbone_keys

    def _use_weight_decay(self, variable):
        return not self._is_backbone(variable) and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if self._is_backbone(variable):
            learning_rate = keras.ops.cast(learning_rate, variable.dtype)
            learning_rate = learning_rate * self._backbone_factor
            if self.weight_decay:
                decay = keras.ops.cast(self.weight_decay, variable.dtype) * learning_rate
                variable.assign(variable - variable * decay)
        return super().update_step(gradient, variable, learning_rate)


def _with_backbone_rate(optimizer_class: type) -> type:
    return type(f"{optimizer_class.__name__}BackboneRate", (BackboneRate, optimizer_class), {})


def backbone_variables(model: keras.Model) -> list:
    """The trainable variables of the nested backbone model(s) of `model`."""
    return [
        variable
        for layer in model.layers
        if isinstance(layer, keras.Model)
        for variable in layer.trainable_variables
    ]


def compile_model(model: keras.Model, params: TrainParams, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=make_optimizer(params, steps_per_epoch, backbone_variables(model)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
