"""The JSON reports the stages hand each other, one typed model per file, read and written here.

    models/run.json              RunInfo           train -> evaluate, register
    reports/train_metrics.json   TrainMetrics      train -> evaluate (the model card); DVC metrics
    reports/validation.json      ValidationReport  validate -> evaluate (the model card)
    reports/metrics.json         MetricsReport     evaluate -> register, bench; DVC metrics

A writer builds the model, so a field it leaves out fails there (pydantic's ValidationError
names it) instead of turning into "unknown" in the model card; readers get attributes, not dict
lookups with fallbacks. `write` gives the layout the stages always wrote (`json.dumps`, indent 2,
fields in the order declared here), so DVC's metrics and files written before compare alike.
An optional field a writer does not give (the bootstrap intervals with bootstrap_samples 0, the
uncalibrated metrics of an uncalibrated model) is left out of the file, not written as null:
null means "undefined" (a melanoma AUC without melanomas).
"""

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator
from pydantic_core import ErrorDetails

from melanoma.errors import MelanomaError
from melanoma.labels import LABELS

log = logging.getLogger(__name__)

# The metrics of an evaluation set that the card, the registry and `melanoma predict` show.
HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "melanoma_auc",
    "melanoma_sensitivity",
    "melanoma_specificity",
)
# Those that do not depend on the melanoma alert threshold: what `train` reports on validation.
THRESHOLD_FREE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_auc")
PER_CLASS_METRICS = ("precision", "recall", "f1")
# Every metric of an evaluation set, in the order of its section: headline, then per class.
EVALUATION_METRICS = (
    *HEADLINE_METRICS,
    *(f"{label}_{kind}" for label in LABELS for kind in PER_CLASS_METRICS),
)


class ReportError(MelanomaError, ValueError):
    """A report file is missing, not JSON, or not what its stage writes; the message names the
    file, the field and the stage to run."""


class Section(BaseModel):
    """A part of a report. Its fields are fixed: an unknown field is an error, as a missing one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """The content as the file holds it: fields in order, those never given left out."""
        return self.model_dump(exclude_unset=True)


class ReportFile(Section):
    """A report file of its own: `read` and `write`."""

    # The stage that writes the file, named when it cannot be read.
    written_by: ClassVar[str]

    @classmethod
    def read(cls, path: Path) -> Self:
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ReportError(
                f"{path}: cannot be read as JSON ({error}); run the `{cls.written_by}` stage"
            ) from None
        try:
            return cls.model_validate(content)
        except ValidationError as error:
            raise ReportError(
                f"{path} {_problems(error)}: it was not written by the `{cls.written_by}` stage "
                "of this code; run that stage again"
            ) from None

    @classmethod
    def read_if_present(cls, path: Path) -> Self | None:
        """The report, or None (with a warning) if there is no such file; a file that is there
        must be valid."""
        if not path.exists():
            log.warning("%s does not exist: what it reports is unknown", path)
            return None
        return cls.read(path)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # default=str: validate's expectation results and file records hold what GX and pandas
        # give (paths, numpy scalars), written as text as they always were.
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


def _problems(error: ValidationError) -> str:
    """`lacks a, b.c; x.y: Input should be ...` from pydantic's errors."""

    def where(problem: ErrorDetails) -> str:
        return ".".join(str(part) for part in problem["loc"]) or "(the whole file)"

    missing = [where(p) for p in error.errors() if p["type"] == "missing"]
    others = [f"{where(p)}: {p['msg']}" for p in error.errors() if p["type"] != "missing"]
    return "; ".join(([f"lacks {', '.join(missing)}"] if missing else []) + others)


# models/run.json


class RunInfo(ReportFile):
    """models/run.json: which MLflow run and logged model `train` made, and how to read the model.

    The run id travels in this file (a DVC output), never as "the latest run": DVC may restore
    `train` from its run cache without running it, and then no new MLflow run exists.
    """

    written_by: ClassVar[str] = "train"

    run_id: str
    experiment_id: str
    model_uri: str
    tracking_uri: str
    labels: list[str]  # the model's outputs, in order
    image_size: int
    temperature: float  # folded into the model; 1.0: uncalibrated


# reports/train_metrics.json


class EpochMetrics(Section):
    """What Keras reports for one epoch (melanoma.model.curves.EPOCH_METRICS)."""

    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float


class FitSummary(Section):
    """The fit: its final and best (lowest val_loss) epochs, and its speed."""

    epochs_run: int
    final: EpochMetrics
    best_epoch: int
    best: EpochMetrics
    saved_model_epoch: int  # whose weights the model keeps
    train_images: int
    first_epoch_seconds: float
    seconds_per_epoch: float  # the steady epochs (after the first) when there are any
    images_per_second: float
    training_seconds: float


class Calibration(Section):
    """The temperature fitted on the validation split (1.0: none) and its effect there."""

    temperature: float
    validation_ece_uncalibrated: float
    validation_brier_uncalibrated: float
    validation_ece: float
    validation_brier: float


class ValidationSplitMetrics(Section):
    """THRESHOLD_FREE_METRICS of the saved model on the validation split (None: undefined)."""

    accuracy: float | None
    balanced_accuracy: float | None
    macro_f1: float | None
    melanoma_auc: float | None


class SourceMetrics(Section):
    """The validation images of one data source: a clinic's own figures (None: undefined, such
    as the AUC of a source without melanomas)."""

    images: int
    melanomas: int
    melanoma_auc: float | None
    balanced_accuracy: float | None


class TrainMetrics(FitSummary, ReportFile):
    """reports/train_metrics.json: the fit, the calibration and the validation metrics, whole
    and per data source."""

    written_by: ClassVar[str] = "train"

    calibration: Calibration
    validation: ValidationSplitMetrics
    validation_per_source: dict[str, SourceMetrics] = {}


# reports/metrics.json


class AlertThreshold(Section):
    """The melanoma alert threshold and how it was chosen (`operating_point`)."""

    threshold: float
    rule: str  # evaluate.operating_point.choose_on
    chosen_on: str  # in words, with the number of images
    target_sensitivity: float
    confidence: float
    melanomas: int
    caught: int
    sensitivity_lower_bound: float
    target_reachable: bool


def _metric_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {"images": (int, ...)}
    for name in EVALUATION_METRICS:
        fields[name] = (float | None, ...)
        fields[f"{name}_ci_low"] = (float | None, None)
        fields[f"{name}_ci_high"] = (float | None, None)
    return fields


# What a set with melanomas says of the alert instead of a note.
_ALERT_FIELDS = ("melanoma_sensitivity_upper_bound", "alert_below_target")
if TYPE_CHECKING:
    # What a type checker cannot read from create_model: fields named from EVALUATION_METRICS.
    class _SetMetrics(Section):
        images: int

        def __getattr__(self, metric: str) -> float | None: ...

else:
    # `images`, then every metric of EVALUATION_METRICS followed by its 95% bootstrap interval.
    _SetMetrics = create_model("_SetMetrics", __base__=Section, **_metric_fields())


class SetSection(_SetMetrics):
    """One evaluation set's section of reports/metrics.json: `images`; every metric of
    EVALUATION_METRICS (None: undefined), each followed by `<metric>_ci_low` and
    `<metric>_ci_high` unless bootstrap_samples is 0; the calibration metrics (and the
    uncalibrated ones when the model was calibrated); its melanomas; and either a note (no
    melanoma) or whether the alert can still reach the target sensitivity there."""

    ece: float
    brier: float
    ece_uncalibrated: float | None = None
    brier_uncalibrated: float | None = None
    melanomas: int
    note: str | None = None
    melanoma_sensitivity_upper_bound: float | None = None
    alert_below_target: bool | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        given = self.model_fields_set
        for side in ("low", "high"):
            without = [m for m in EVALUATION_METRICS if f"{m}_ci_{side}" not in given]
            if 0 < len(without) < len(EVALUATION_METRICS):
                raise ValueError(f"intervals for some metrics only: no {without[0]}_ci_{side}")
        needed = ("note",) if self.melanomas == 0 else _ALERT_FIELDS
        missing = [name for name in needed if name not in given]
        if missing:
            raise ValueError(f"a set with {self.melanomas} melanomas lacks {', '.join(missing)}")
        return self

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The bootstrap interval of `metric`, None if there is none or it is undefined."""
        low, high = getattr(self, f"{metric}_ci_low"), getattr(self, f"{metric}_ci_high")
        return None if low is None or high is None else (low, high)


class ReportingHalf(Section):
    """What an alert threshold delivered on an external set's reporting half."""

    melanomas: int
    sensitivity: float
    specificity: float


class ThresholdRule(Section):
    """A way of choosing the threshold: the threshold, and what it delivered per external set."""

    threshold: float
    reporting_halves: dict[str, ReportingHalf]


class MetricsReport(ReportFile):
    """reports/metrics.json: the alert threshold, a section per evaluation set (`test`, then
    `external.<name>`), warnings, and what each threshold rule delivered."""

    written_by: ClassVar[str] = "evaluate"

    operating_point: AlertThreshold
    temperature: float
    bootstrap_samples: int
    test: SetSection
    external: dict[str, SetSection]
    warnings: list[str]
    threshold_rules: dict[str, ThresholdRule]

    def sections(self) -> list[tuple[str, SetSection]]:
        """(set name, section): the test split, then each external set."""
        return [("test", self.test), *self.external.items()]


# reports/validation.json

# A row of the manifest as validate names it (a file of a duplicate group, a dropped copy...).
Record = dict[str, Any]


class ValidatePolicy(Section):
    on_label_conflict: str
    on_leak: str
    on_duplicate: str
    on_reference_disagreement: str


class ExpectationOutcome(Section):
    """One Great Expectations expectation: its outcome and what it observed."""

    suite: str
    name: str
    expectation: str
    column: str | None
    success: bool
    critical: bool
    observed_value: Any


class ClassCounts(Section):
    """Images per label and split: accepted at ingest (by folder label), used (by label used)."""

    accepted: dict[str, dict[str, int]]
    used: dict[str, dict[str, int]]


class TooFewTrainingImages(Section):
    threshold: int  # validate.min_images_per_class.train
    labels: dict[str, int]  # label -> training images left in use, below the threshold


class DisagreementPair(Section):
    folder_label: str
    reference_class: str
    reference_label: str
    images: int
    actions: dict[str, int]


class ReferenceCheck(Section):
    """The check of folder labels against ISIC's ground truth; `file` None: switched off, and
    then nothing else is written."""

    file: str | None
    sha256: str | None = None
    rows: int | None = None
    ambiguous_ids: dict[str, list[str]] | None = None  # ISIC id -> its classes
    images: dict[str, int] | None = None  # per outcome of the check
    relabelled: int | None = None
    label_conflicts_decided: int | None = None
    label_conflicts_undecided: int | None = None
    recovered_from_conflicts: dict[str, dict[str, int]] | None = None
    disagreement_pairs: list[DisagreementPair] | None = None
    disagreements: list[Record] | None = None

    @model_validator(mode="after")
    def _complete_when_checked(self) -> Self:
        if self.file is not None:
            missing = [
                name for name in type(self).model_fields if name not in self.model_fields_set
            ]
            if missing:
                raise ValueError(f"a check of {self.file} lacks {', '.join(missing)}")
        return self


class SourceOutcome(Section):
    files: int
    used: dict[str, int]  # per split
    removed: dict[str, int]  # per reason


class SameImageCopies(Section):
    count: int
    examples: list[Record]  # a few; the validated manifest names them all


class NearDuplicates(Section):
    max_distance: int | None
    count: int
    pairs: list[Record]


class SameGroupAsTest(Section):
    count: int
    files: list[Record]


class ValidationReport(ReportFile):
    """reports/validation.json: validate's expectations, the duplicates, conflicts and leaks it
    found, what the reference check did, and its decision for every image, counted."""

    # The one report that grows with each new check of validate: a field this code does not
    # know is kept (and listed by the model card), not refused.
    model_config = ConfigDict(extra="allow")
    written_by: ClassVar[str] = "validate"

    success: bool
    failures: list[str]
    policy: ValidatePolicy
    expectations: list[ExpectationOutcome]
    class_counts: ClassCounts
    too_few_training_images: TooFewTrainingImages
    reference_labels: ReferenceCheck
    label_conflicts: list[Record]
    leaks: list[Record]
    duplicates: list[Record]
    sources: dict[str, SourceOutcome]
    same_image_copies: SameImageCopies
    near_duplicates: NearDuplicates
    same_group_as_test: SameGroupAsTest
    decisions: dict[str, int]  # images per decision
    removed: dict[str, int]  # images per reason
