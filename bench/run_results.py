"""The JSON `python -m bench.run` writes, assembled from what each measurement returned: both
sides scored on the same test images, our pipeline's reports, the machine, and the spread over
seeds (`assemble`)."""

import os
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench.run_settings import Settings
from bench.run_table import table_rows
from bench.seeds import seed_spread
from bench.source import label_index
from melanoma.config import Params
from melanoma.data.manifest import USE, VALIDATED_COLUMNS, read_manifest
from melanoma.evaluation.metrics import metrics_report
from melanoma.labels import LABELS
from melanoma.params.data import DataSource
from melanoma.reports import MetricsReport, TrainMetrics

# Unused by the table's test rows (bench.run_table.TEST_ROWS); metrics_report needs one.
REFERENCE_THRESHOLD = 0.5


def max_abs_difference(latency: dict, serving: dict) -> float:
    """The largest difference between a probability the server answered and the one `melanoma
    predict`'s code path (bench.latency) gave for the same file."""
    latency_predictions = latency["predictions"]
    predicted = dict(
        zip(latency_predictions["path"], latency_predictions["probabilities"], strict=True)
    )
    served = serving["predictions"]
    return max(
        float(np.max(np.abs(np.subtract(probabilities, predicted[path]))))
        for path, probabilities in zip(served["path"], served["probabilities"], strict=True)
    )


def clean_test_labels(validated_manifest: Path) -> dict[str, int]:
    """source_path -> label index of the test images validate kept (decision `use`)."""
    manifest = read_manifest(validated_manifest, VALIDATED_COLUMNS)
    kept = manifest[(manifest["decision"] == USE) & (manifest["split"] == "test")]
    return {
        path: LABELS.index(label)
        for path, label in zip(kept["source_path"], kept["label"], strict=True)
    }


def split_report(
    source_path: list[str],
    probabilities: list[list[float]],
    bootstrap_samples: int,
    labels: dict[str, int] | None = None,
) -> dict:
    """melanoma.evaluation.metrics.metrics_report of predictions on the images of `labels`
    (source_path -> label index), or on every predicted image, labelled by its class folder, if
    `labels` is None.
    """
    predicted = dict(zip(source_path, probabilities, strict=True))
    if labels is None:
        labels = {path: label_index(path) for path in source_path}
    unpredicted = sorted(set(labels) - set(predicted))
    if unpredicted:
        raise ValueError(f"{len(unpredicted)} test image(s) were not predicted: {unpredicted[:3]}")
    paths = sorted(labels)
    return metrics_report(
        np.array([labels[p] for p in paths]),
        np.array([predicted[p] for p in paths], dtype=np.float64),
        REFERENCE_THRESHOLD,
        bootstrap_samples,
        seed=42,
    )


def saved_model_val_accuracy(summary: dict) -> float:
    """Validation accuracy of the epoch whose weights the model keeps (training_summary)."""
    best = summary["saved_model_epoch"] == summary["best_epoch"]
    return summary["best" if best else "final"]["val_accuracy"]


def assemble(
    settings: Settings,
    data_sources: list[DataSource],
    ours: dict,
    latency: dict,
    serving: dict,
    reference: dict,
    clean_test: dict[str, int],
    params: Params,
    seed_runs: list[dict],
) -> dict:
    """The JSON written: both sides' details, the images/s ratio, the spread over seeds, and the
    table rows.

    `reference` and `latency` are what bench.reference and bench.latency wrote, with their test
    predictions keyed by source_path; `ours` is what bench.pipeline.run_pipeline returned;
    `seed_runs` what bench.seeds.train_more_seeds returned for the seeds after the first. The
    reports in `ours` and `seed_runs` go into the JSON as their files hold them.
    """
    samples = params.evaluate.bootstrap_samples
    reference_predicted = reference.pop("test_predictions")
    reference["val_accuracy"] = saved_model_val_accuracy(reference)
    reference["raw_test"] = split_report(**reference_predicted, bootstrap_samples=samples)
    reference["clean_test"] = split_report(
        **reference_predicted, bootstrap_samples=samples, labels=clean_test
    )

    our_predicted = latency.pop("predictions")
    train_metrics: TrainMetrics = ours.pop("train_metrics")
    report: MetricsReport = ours.pop("test_metrics")
    pipeline = {
        "image_size": params.train.image_size,
        **train_metrics.to_dict(),
        "val_accuracy": saved_model_val_accuracy(train_metrics.to_dict()),
        "raw_test": split_report(**our_predicted, bootstrap_samples=samples),
        "clean_test": report.test.to_dict(),
        "report": report.to_dict(),
        **ours,
        "predict": latency,
        "serving": serving,
    }
    if pipeline["clean_test"]["images"] != len(clean_test):
        raise RuntimeError(
            f"evaluate scored {pipeline['clean_test']['images']} test images but validate "
            f"kept {len(clean_test)}: the two sides would not be compared on the same images"
        )
    ratio = pipeline["images_per_second"] / reference["images_per_second"]
    raw_test_images = reference["raw_test"]["images"]
    seeds = {
        "seeds": [params.train.seed] + [run["seed"] for run in seed_runs],
        "spread": seed_spread([report] + [run["metrics"] for run in seed_runs]),
        # Identical params, other seeds: none of these trainings should take the champion.
        "champion_moved_by": [run["seed"] for run in seed_runs if run["decision"] == "promoted"],
        "runs": [run | {"metrics": run["metrics"].to_dict()} for run in seed_runs],
    }
    return {
        "mode": settings.mode,
        "sources": {s.name: str(s.path) for s in data_sources},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": version("tensorflow-cpu"),
            "keras": version("keras"),
        },
        "data": {
            "tiny_source_files_per_class": settings.tiny_source,
            "raw_test_images": raw_test_images,
            "clean_test_images": len(clean_test),
            "test_images_removed_by_validate": raw_test_images - len(clean_test),
            "removed_by_validate": pipeline.pop("validation_removed"),
            "external_images": {name: section.images for name, section in report.external.items()},
            "bootstrap_samples": samples,
        },
        "settings": {
            "reference": {k: reference[k] for k in ("image_size", "epochs", "batch_size")},
            "ours_param_overrides": settings.overrides,
        },
        "reference": reference,
        "ours": pipeline,
        "images_per_second_ratio": ratio,
        "seeds": seeds,
        "table": table_rows(reference, pipeline, report, ratio, seeds),
    }
