"""The evaluation and release sections of `params.yaml`: how `evaluate` scores the model and
chooses its alert threshold, how `register` promotes it, and where MLflow tracks the runs."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from melanoma.params.base import _Section


class ExternalSet(_Section):
    """A labelled image folder from outside the training collection: <class>/<image>."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="prefix of its MLflow metrics")
    path: Path


class OperatingPoint(_Section):
    """How the melanoma alert threshold is chosen (melanoma.evaluation.operating_point)."""

    target_sensitivity: float = Field(0.85, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # `validation`; the name of an external set (half of it chooses, the other half reports);
    # `pooled` (validation and every external set's choosing half together); or
    # `shift_margin` (validation, its target raised by the sensitivity it lost on the
    # external choosing halves).
    choose_on: str = "validation"


class EvaluateParams(_Section):
    external_sets: list[ExternalSet] = Field(default_factory=list)
    operating_point: OperatingPoint = OperatingPoint()
    bootstrap_samples: int = Field(1000, ge=0)
    seed: int = 42

    @field_validator("external_sets")
    @classmethod
    def _unique_names(cls, sets: list[ExternalSet]) -> list[ExternalSet]:
        names = [s.name for s in sets]
        reserved = {"test", "validation", "pooled", "shift_margin"} & set(names)
        if reserved:
            raise ValueError(f"{sorted(reserved)} name the pipeline's own splits")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique: {names}")
        return sets

    @model_validator(mode="after")
    def _known_choose_on(self) -> "EvaluateParams":
        external = [s.name for s in self.external_sets]
        allowed = ["validation", *external] + (["pooled", "shift_margin"] if external else [])
        if self.operating_point.choose_on not in allowed:
            raise ValueError(
                f"evaluate.operating_point.choose_on={self.operating_point.choose_on!r} is "
                f"none of {allowed} (pooled and shift_margin need an external set)"
            )
        return self


class PromotionParams(_Section):
    """The paired bootstrap of the primary metric's difference, challenger minus champion."""

    bootstrap_samples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 42


class RegistryParams(_Section):
    model_name: str = Field(min_length=1)
    # Threshold-free figures only: each model has its own alert threshold.
    primary_metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "melanoma_auc"]
    min_improvement: float = Field(0.0, ge=0)
    promotion: PromotionParams = PromotionParams()


class MlflowParams(_Section):
    experiment: str = Field(min_length=1)
    tracking_uri: str = Field(description="used when MLFLOW_TRACKING_URI is not set")
    artifact_location: Path
