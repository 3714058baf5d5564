"""`params.yaml`, parsed once into typed, checked objects.

Every stage calls `load_params()` first, so a bad value stops the run before any work,
with the dotted name of the param in the message (for example `train.epochs`).

Each section's model lives in melanoma.params, one module per concern; this module
composes them into `Params` and checks what spans sections.
"""

import re
from pathlib import Path
from typing import TypeGuard

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from melanoma.errors import MelanomaError
from melanoma.params.base import _Section
from melanoma.params.data import AugmentParams, DataParams, IngestParams, ValidateParams
from melanoma.params.evaluation import EvaluateParams, MlflowParams, RegistryParams
from melanoma.params.lite_specs import LITE
from melanoma.params.model import PredictParams, PreprocessParams, ServeParams, TrainParams
from melanoma.params.sites import SiteParams, UnfamiliarParams

PARAMS_FILE = Path("params.yaml")


class ParamsError(MelanomaError, ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


class Params(_Section):
    data: DataParams
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    augment: AugmentParams
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams
    predict: PredictParams = PredictParams()
    evaluate: EvaluateParams
    registry: RegistryParams
    serve: ServeParams = ServeParams()
    unfamiliar: UnfamiliarParams = UnfamiliarParams()
    sites: SiteParams = SiteParams()
    mlflow: MlflowParams

    @model_validator(mode="after")
    def _train_size_within_ingest(self) -> "Params":
        if self.train.image_size > self.ingest.image_size:
            raise ValueError(
                f"train.image_size={self.train.image_size} exceeds ingest.image_size="
                f"{self.ingest.image_size}: the model cannot see more pixels than were ingested"
            )
        return self

    @model_validator(mode="after")
    def _weighted_sources_exist(self) -> "Params":
        names = [source.name for source in self.data.sources]
        unknown = sorted(set(self.train.source_weights) - set(names))
        if unknown:
            raise ValueError(f"train.source_weights names {unknown}, not sources of data: {names}")
        if any(weight < 0 for weight in self.train.source_weights.values()):
            raise ValueError("train.source_weights: a weight must be >= 0")
        return self

    @model_validator(mode="after")
    def _depth_shared_by_the_members(self) -> "Params":
        # An ensemble shares the frozen blocks only: a layer above them is one per member.
        train, depth = self.train, self.unfamiliar.depth
        spec = LITE.get(train.architecture)
        if (
            train.ensemble == 1
            or not spec
            or depth == "pooled"
            or not isinstance(train.freeze, int)
        ):
            return self
        block = re.match(r"block(\d+)_", depth)
        frozen = depth.startswith("stem") or (
            block and int(block[1]) < spec.n_blocks - train.freeze
        )
        if not frozen:
            raise ValueError(
                f"unfamiliar.depth={depth!r} is in the top {train.freeze} blocks "
                f"(train.freeze), which each of the train.ensemble={train.ensemble} members "
                f"trains for itself: a layer at or below {spec.cut_layer(train.freeze)}, or "
                "'pooled'"
            )
        return self

    @model_validator(mode="after")
    def _depth_is_a_backbone_layer(self) -> "Params":
        depth, spec = self.unfamiliar.depth, LITE.get(self.train.architecture)
        if spec and depth != "pooled" and depth not in spec.layer_names():
            raise ValueError(
                f"unfamiliar.depth={depth!r} is not a layer of the {self.train.architecture} "
                f"backbone (train.architecture): 'pooled', or a layer such as "
                f"{spec.cut_layer(1)} (blocks 0 to {spec.n_blocks - 1})"
            )
        return self


def parse_params(raw: dict) -> Params:
    """Check a params mapping; raise ParamsError naming every bad param."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            name = ".".join(str(part) for part in e["loc"]) or "params"
            problems.append(f"  {name}: {e['msg']}")
        raise ParamsError("invalid params.yaml:\n" + "\n".join(problems)) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as error:
        raise ParamsError(f"{path}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not YAML ({error})") from None
    return parse_params(raw)


def flatten(params: BaseModel, prefix: str = "") -> dict[str, object]:
    """`{"train.epochs": 20, ...}`: the form MLflow's log_params and DVC's `-S` use."""
    flat: dict[str, object] = {}
    for name, value in params.model_dump(by_alias=True).items():
        _flatten_into(flat, f"{prefix}{name}", value)
    return flat


def _flatten_into(flat: dict[str, object], key: str, value: object) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten_into(flat, f"{key}.{k}", v)
    elif _named_items(value):
        # A list of named sections (data sources, external sets): one key per name and field,
        # so that adding one shows as new params, not as one long changed value.
        for item in value:
            _flatten_into(
                flat, f"{key}.{item['name']}", {k: v for k, v in item.items() if k != "name"}
            )
    else:
        flat[key] = str(value) if isinstance(value, Path) else value


def _named_items(value: object) -> TypeGuard[list[dict[str, object]]]:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "name" in item for item in value)
    )
