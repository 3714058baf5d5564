"""The reports the stages hand each other: a writer cannot leave a field out, a file reads back
as it was written, and the files the pipeline wrote before read and write back byte for byte."""

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from melanoma import paths
from melanoma.evaluation.metrics import metrics_report
from melanoma.labels import LABELS
from melanoma.metrics import evaluation_metrics
from melanoma.reports import (
    EVALUATION_METRICS,
    THRESHOLD_FREE_METRICS,
    MetricsReport,
    ReferenceCheck,
    ReportError,
    RunInfo,
    SetSection,
    TrainMetrics,
    ValidationReport,
    ValidationSplitMetrics,
)

PROJECT = Path(__file__).resolve().parent.parent
# The reports of the committed pipeline run, written by the stages before these models.
COMMITTED = [
    (RunInfo, paths.RUN_FILE),
    (TrainMetrics, paths.TRAIN_METRICS),
    (ValidationReport, paths.VALIDATION_REPORT),
    (MetricsReport, paths.METRICS_FILE),
]


def _run_info(**changes) -> dict:
    return {
        "run_id": "a" * 32,
        "experiment_id": "1",
        "model_uri": "models:/m-1",
        "tracking_uri": "sqlite:///mlruns/mlflow.db",
        "labels": list(LABELS),
        "image_size": 180,
        "temperature": 1.2,
    } | changes


def _section(bootstrap_samples: int = 20, melanomas: bool = True) -> dict:
    """A set's section as evaluate writes it: metrics_report, calibration, the alert fields."""
    rng = np.random.default_rng(0)
    label_indices = np.repeat(np.arange(len(LABELS)), 3)
    if not melanomas:
        label_indices = label_indices[label_indices != LABELS.index("melanoma")]
    probabilities = rng.dirichlet(np.ones(len(LABELS)), len(label_indices))
    section = metrics_report(label_indices, probabilities, 0.3, bootstrap_samples, seed=0)
    section |= {"ece": 0.1, "brier": 0.8, "melanomas": 3 if melanomas else 0}
    if melanomas:
        return section | {"melanoma_sensitivity_upper_bound": 0.9, "alert_below_target": False}
    return section | {"note": "no melanoma in this set: melanoma-vs-rest figures are undefined"}


def _metrics_report() -> dict:
    return {
        "operating_point": {
            "threshold": 0.25,
            "rule": "validation",
            "chosen_on": "the validation split (27 images)",
            "target_sensitivity": 0.85,
            "confidence": 0.95,
            "melanomas": 3,
            "caught": 3,
            "sensitivity_lower_bound": 0.37,
            "target_reachable": False,
        },
        "temperature": 1.2,
        "bootstrap_samples": 20,
        "test": _section(),
        "external": {"ext": _section(bootstrap_samples=0, melanomas=False)},
        "warnings": [],
        "threshold_rules": {
            "validation": {
                "threshold": 0.25,
                "reporting_halves": {
                    "ext": {"melanomas": 2, "sensitivity": 1.0, "specificity": 0.5}
                },
            }
        },
    }


def _train_metrics() -> dict:
    return json.loads((PROJECT / paths.TRAIN_METRICS).read_text())


def test_a_writer_cannot_leave_out_a_field():
    content = _train_metrics()
    del content["seconds_per_epoch"]
    with pytest.raises(ValidationError, match="seconds_per_epoch\n  Field required"):
        TrainMetrics.model_validate(content)

    content = _train_metrics()
    del content["calibration"]["validation_ece"]
    with pytest.raises(ValidationError, match=r"calibration\.validation_ece\n  Field required"):
        TrainMetrics.model_validate(content)

    info = _run_info()
    del info["temperature"]
    with pytest.raises(ValidationError, match="temperature\n  Field required"):
        RunInfo.model_validate(info)

    section = _section()
    del section["melanomas"]
    with pytest.raises(ValidationError, match="melanomas\n  Field required"):
        SetSection.model_validate(section)

    report = _metrics_report()
    del report["threshold_rules"]
    with pytest.raises(ValidationError, match="threshold_rules\n  Field required"):
        MetricsReport.model_validate(report)


def test_a_field_the_model_does_not_know_is_refused_too():
    with pytest.raises(ValidationError, match="model_url\n  Extra inputs are not permitted"):
        RunInfo.model_validate(_run_info(model_url="models:/m-1"))
    with pytest.raises(ValidationError, match="melanoma_aux\n  Extra inputs"):
        SetSection.model_validate(_section() | {"melanoma_aux": 0.5})


def test_optional_fields_come_together_or_not_at_all():
    # Intervals for every metric, or (bootstrap_samples 0) for none.
    section = _section()
    del section["macro_f1_ci_low"]
    with pytest.raises(ValidationError, match="intervals for some metrics only: no macro_f1"):
        SetSection.model_validate(section)
    # A set with melanomas says whether the alert can reach its target there.
    section = _section()
    del section["alert_below_target"]
    with pytest.raises(ValidationError, match="3 melanomas lacks alert_below_target"):
        SetSection.model_validate(section)
    # A reference check that ran says what it found.
    with pytest.raises(ValidationError, match="lacks .*sha256"):
        ReferenceCheck(file="truth.csv", images={"agrees": 3})
    assert ReferenceCheck(file=None).to_dict() == {"file": None}


def test_a_report_reads_back_as_it_was_written(tmp_path):
    report = MetricsReport.model_validate(_metrics_report())
    path = tmp_path / "reports" / "metrics.json"

    report.write(path)

    assert MetricsReport.read(path) == report
    assert path.read_text() == json.dumps(_metrics_report(), indent=2) + "\n"
    written = json.loads(path.read_text())
    # Undefined stays null; an interval that was not computed is not in the file at all.
    assert written["external"]["ext"]["melanoma_auc"] is None
    assert "accuracy_ci_low" in written["test"]
    assert not any(key.endswith("_ci_low") for key in written["external"]["ext"])
    assert report.external["ext"].interval("accuracy") is None
    low, high = report.test.interval("accuracy")
    assert low <= report.test.accuracy <= high


@pytest.mark.parametrize(("model", "path"), COMMITTED, ids=[str(p) for _, p in COMMITTED])
def test_the_files_the_pipeline_wrote_read_and_write_back_byte_for_byte(model, path, tmp_path):
    report = model.read(PROJECT / path)
    report.write(tmp_path / path.name)
    assert (tmp_path / path.name).read_text() == (PROJECT / path).read_text()


def test_a_file_that_is_not_what_its_stage_writes_names_the_field_and_the_stage(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(ReportError, match=r"run\.json lacks .*model_uri.*the `train` stage"):
        RunInfo.read(path)
    path.write_text(json.dumps(_run_info(image_size="large")))
    with pytest.raises(ReportError, match="image_size: Input should be a valid integer"):
        RunInfo.read(path)
    with pytest.raises(ReportError, match="cannot be read as JSON.*run the `evaluate` stage"):
        MetricsReport.read(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(ReportError, match="cannot be read as JSON"):
        RunInfo.read(path)


def test_an_absent_optional_report_is_none_a_broken_one_an_error(tmp_path):
    assert TrainMetrics.read_if_present(tmp_path / "train_metrics.json") is None
    (tmp_path / "train_metrics.json").write_text("{}")
    with pytest.raises(ReportError, match="lacks epochs_run"):
        TrainMetrics.read_if_present(tmp_path / "train_metrics.json")


def test_the_models_name_the_metrics_the_code_computes():
    label_indices = np.arange(len(LABELS))
    probabilities = np.eye(len(LABELS))
    assert tuple(evaluation_metrics(label_indices, probabilities, 0.5)) == EVALUATION_METRICS
    assert tuple(ValidationSplitMetrics.model_fields) == THRESHOLD_FREE_METRICS


def test_validation_report_keeps_a_field_of_a_newer_validate():
    content = json.loads((PROJECT / paths.VALIDATION_REPORT).read_text())
    report = ValidationReport.model_validate(content | {"label_references": [{"id": 1}]})
    assert report.model_extra == {"label_references": [{"id": 1}]}
    assert list(report.to_dict())[-1] == "label_references"
