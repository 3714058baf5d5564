"""Benchmark: the common notebook recipe against our pipeline, same data, same machine, one run.

In a temporary directory: our pipeline runs in a clean copy of the project (every stage of a
clean `dvc repro`, timed one by one, then a no-op `dvc repro`, a head-only change, and a forced
second train + evaluate to check that the test metrics reproduce), the trained model's
single-image predict latency is measured, and the reference recipe (bench/reference.py) trains
on the first `folders` source (the collection). With --seeds N, the same params are then
trained again with N - 1 other train.seed values, and every quality figure of the test split and
the external sets is reported as mean, standard deviation and range over the N seeds, with
whether any of those trainings moved the registry's champion. One table is printed and written
as JSON.

    python -m bench.run [--quick] [--seeds N] [--out PATH] [--sources NAME ...] [--loops]

--sources keeps only the named sources of params.yaml (say, the collection alone, to see how
each stage's time grows with the data). --loops adds the loops a contributor pays in this
workspace (bench/loops.py: no-op `dvc repro` here and in a fresh clone, a training-only change
by stage, `make test-fast` and `make test`); the workspace must be up to date (`make pipeline`).
"""

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench import loops
from bench.pipeline import run_pipeline
from bench.process import run_command
from bench.project import (
    PROJECT,
    command_env,
    copy_project,
    pin_source_deps,
    project_reference_labels,
)
from bench.seeds import SEED_METRICS, independent_seeds, seed_spread, train_more_seeds
from bench.source import label_index, split_folder, tiny_external_set, tiny_sources
from melanoma import paths
from melanoma.config import Params, load_params
from melanoma.data.manifest import (
    USE,
    VALIDATED_COLUMNS,
    read_manifest,
    read_sources_summary,
)
from melanoma.evaluation.metrics import metrics_report
from melanoma.labels import LABELS
from melanoma.logs import setup_logging
from melanoma.params.data import DataSource, FolderSource
from melanoma.reports import EVALUATION_METRICS, MetricsReport, TrainMetrics

log = logging.getLogger(__name__)

DEFAULT_OUT = PROJECT / "bench" / "results" / "bench.json"
VALIDATED_MANIFEST = Path("data/validated/manifest.csv")
MODEL_FILE = Path("models/model.keras")


@dataclass(frozen=True)
class Settings:
    mode: str
    reference_image_size: int
    reference_epochs: int
    # Params of our pipeline changed in the copy (dotted names, as `dvc exp run -S`).
    overrides: dict[str, object] = field(default_factory=dict)
    # Real files per label and split copied into a tiny source; None: the whole source.
    tiny_source: dict[str, int] | None = None
    # Real files per class folder of each external set copied; None: the whole sets.
    tiny_external: int | None = None


FULL = Settings("full", reference_image_size=180, reference_epochs=30)
QUICK = Settings(
    "quick",
    reference_image_size=32,
    reference_epochs=1,
    overrides={
        "ingest.image_size": 32,
        "validate.min_images_per_class": {"train": 2, "test": 1},
        "augment.val_fraction": 0.25,
        "augment.target_per_class": 8,
        "train.image_size": 32,
        "train.filters": [8, 16],
        "train.batch_size": 8,
        "train.epochs": 1,
        "train.warmup_epochs": 0,
        # One model per seed: the smoke run checks the table, an ensemble would triple each of
        # its four trainings (tests/model/test_ensemble.py trains ensembles).
        "train.ensemble": 1,
        "evaluate.bootstrap_samples": 20,
        "registry.promotion": {"bootstrap_samples": 100, "confidence": 0.95, "seed": 42},
    },
    tiny_source={"train": 6, "test": 2},
    tiny_external=4,
)

# (key, figure, unit) of each table row; the unit also chooses how the value is printed.
SPEED_ROWS = [
    ("epochs_run", "epochs trained", "count"),
    ("train_images", "training images per epoch", "count"),
    ("first_epoch_seconds", "first epoch (warm-up, cache fill)", "s"),
    ("seconds_per_epoch", "s/epoch (mean of epochs 2+, or epoch 1 if alone)", "s"),
    ("images_per_second", "training images/s (steady epochs)", "images/s"),
]
# Threshold-free figures of both sides on the clean test split (the recipe has no threshold).
TEST_ROWS = [
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("melanoma_auc", "melanoma-vs-rest ROC AUC"),
]
REFERENCE_THRESHOLD = 0.5  # unused by TEST_ROWS; metrics_report needs one


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a tiny source of a few real files per class, 32 px, 1 epoch each",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train the default params with this many train.seed values (the params' seed, "
        "then the next ones) and report each quality figure's spread (default: 1)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        metavar="NAME",
        help="only these sources of params.yaml data.sources (default: all of them)",
    )
    parser.add_argument(
        "--scaling",
        nargs="+",
        metavar="NAME",
        help="first time every stage on these sources alone, in a clean copy of its own, so "
        "that each stage's growth with the data is measured in the same run",
    )
    parser.add_argument(
        "--loops",
        action="store_true",
        help="also the contributor's loops in this workspace (bench.loops --tests --clone)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    setup_logging()

    settings = QUICK if args.quick else FULL
    everything = load_params(PROJECT / "params.yaml").data.sources
    names = args.sources or [source.name for source in everything]
    unknown = sorted(set(names + (args.scaling or [])) - {source.name for source in everything})
    if unknown:
        parser.error(f"no source {unknown} in params.yaml data.sources")

    def resolved(chosen: list[str]) -> list[DataSource]:
        return [
            source.model_copy(update={"path": (PROJECT / source.path).resolve()})
            for source in everything
            if source.name in chosen
        ]

    logs = args.out.parent / "logs" / settings.mode
    with tempfile.TemporaryDirectory(prefix="melanoma-bench-") as work:
        results = benchmark(
            resolved(names),
            settings,
            Path(work),
            logs,
            args.seeds,
            resolved(args.scaling) if args.scaling else None,
        )
    if args.loops:
        results["loops"] = loops.measure_all(repeats=3, tests=True, clone=True)
        results["table"] += loops.table_rows(results["loops"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(format_table(results))
    log.info("wrote %s (command output in %s)", args.out, logs)


def benchmark(
    data_sources: list[DataSource],
    settings: Settings,
    work: Path,
    logs: Path,
    seeds: int = 1,
    scaling_sources: list[DataSource] | None = None,
) -> dict:
    """Run both sides in `work` and return the results (see `assemble`); with
    `scaling_sources`, time our pipeline on those first (`scaling_run`)."""
    if settings.tiny_source:
        data_sources = tiny_sources(data_sources, work / "sources", settings.tiny_source)
    scaling = (
        scaling_run(scaling_sources, settings, work / "scaling", logs / "scaling")
        if scaling_sources
        else None
    )
    # The recipe reads class folders: it trains on the first folders source, the collection.
    source = next(s.path for s in data_sources if isinstance(s, FolderSource))
    test_folder = split_folder(source, "test")
    pinned = {
        "data.sources": [s.model_dump(mode="json") for s in data_sources],
        "evaluate.external_sets": external_sets(settings, work),
        **project_reference_labels(),
    }
    copy = copy_project(work / "project", {**pinned, **settings.overrides})
    pin_source_deps(copy / "dvc.yaml", len(data_sources))
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    env = command_env(MLFLOW_TRACKING_URI=tracking_uri)

    ours = run_pipeline(copy, env, logs)
    params = load_params(copy / "params.yaml")
    latency = run_json(
        "bench.latency",
        ["--model", copy / MODEL_FILE, "--params", copy / "params.yaml", "--images", test_folder],
        work / "latency.json",
        env,
        logs,
    )
    serving = run_json(
        "bench.serving",
        [
            *("--model", f"models:/{params.registry.model_name}@champion"),
            *("--params", copy / "params.yaml", "--images", test_folder, "--logs", logs),
        ],
        work / "serving.json",
        env,
        logs,
    )
    serving["max_abs_difference_from_predict"] = max_abs_difference(latency, serving)
    reference = run_json(
        "bench.reference",
        [
            "--source",
            source,
            "--image-size",
            settings.reference_image_size,
            "--epochs",
            settings.reference_epochs,
        ],
        work / "reference.json",
        env,
        logs,
    )
    predicted = latency["predictions"]
    predicted["source_path"] = [
        Path(path).resolve().relative_to(source).as_posix() for path in predicted.pop("path")
    ]
    clean_test = clean_test_labels(copy / VALIDATED_MANIFEST)
    # After the latency and the recipe: they use the model of the params' own seed.
    more_seeds = independent_seeds(params.train, seeds)[1:]
    seed_runs = train_more_seeds(copy, env, logs, more_seeds, tracking_uri)
    ours["accepted_images"] = accepted_images(copy)
    results = assemble(
        settings, data_sources, ours, latency, serving, reference, clean_test, params, seed_runs
    )
    if scaling:
        results["scaling"] = scaling
        results["table"] += scaling_rows(scaling, ours)
    return results


def accepted_images(copy: Path) -> int:
    """Images ingest accepted in a pipeline copy, all sources together."""
    return sum(s["accepted"] for s in read_sources_summary(copy / paths.SOURCES_SUMMARY))


def scaling_run(data_sources: list[DataSource], settings: Settings, work: Path, logs: Path) -> dict:
    """Our pipeline's stage times, no-op and head-only change on `data_sources` alone, in a
    clean copy of its own (no reference recipe, no predict latency, one seed)."""
    if settings.tiny_source:
        data_sources = tiny_sources(data_sources, work / "sources", settings.tiny_source)
    pinned = {
        "data.sources": [s.model_dump(mode="json") for s in data_sources],
        "evaluate.external_sets": external_sets(settings, work),
        **project_reference_labels(),
    }
    copy = copy_project(work / "project", {**pinned, **settings.overrides})
    pin_source_deps(copy / "dvc.yaml", len(data_sources))
    env = command_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    timed = run_pipeline(copy, env, logs)
    return {
        "sources": [s.name for s in data_sources],
        "accepted_images": accepted_images(copy),
        **{
            key: timed[key]
            for key in (
                "stage_seconds",
                "full_repro_seconds",
                "noop_repro_seconds",
                "head_only_repro_seconds",
                "peak_rss_mib",
            )
        },
    }


def scaling_rows(scaling: dict, ours: dict) -> list[dict]:
    """Per stage (and the whole, no-op and head-only `dvc repro`), the time on the scaling
    sources against all sources, and the ratio: how each grows with the images."""
    few, many = scaling["accepted_images"], ours["accepted_images"]
    timings = [
        (f"stage_seconds_{stage}", f"stage {stage}", seconds, ours["stage_seconds"][stage])
        for stage, seconds in scaling["stage_seconds"].items()
    ]
    timings += [
        (key, figure, scaling[key], ours[key])
        for key, figure in (
            ("full_repro_seconds", "whole dvc repro"),
            ("noop_repro_seconds", "dvc repro, nothing changed"),
            ("head_only_repro_seconds", "head-only change"),
        )
    ]
    subset = "+".join(scaling["sources"])
    return [
        _row(
            f"scaling_{key}",
            f"{figure}: {few} images ({subset}) -> {many}: {before:.1f} s -> {after:.1f} s, growth",
            "x",
            None,
            after / before,
        )
        for key, figure, before, after in timings
    ]


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


def external_sets(settings: Settings, work: Path) -> list[dict]:
    """The project's external sets with absolute paths (tiny copies in quick mode)."""
    sets = []
    for external in load_params(PROJECT / "params.yaml").evaluate.external_sets:
        folder = (PROJECT / external.path).resolve()
        if settings.tiny_external:
            folder = tiny_external_set(
                folder, work / "external" / external.name, settings.tiny_external
            )
        sets.append({"name": external.name, "path": str(folder)})
    return sets


def run_json(module: str, arguments: list, out: Path, env: dict[str, str], logs: Path) -> dict:
    """Run `python -m <module> ... --out <out>` from the project root; return the JSON it wrote."""
    command = [sys.executable, "-m", module, *map(str, arguments), "--out", str(out)]
    run_command(command, PROJECT, env, logs / f"{module.removeprefix('bench.')}.log")
    return json.loads(out.read_text())


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


def table_rows(
    reference: dict, ours: dict, report: MetricsReport, ratio: float, seeds: dict
) -> list[dict]:
    """One row per figure: reference and ours values (None where a figure is ours only), the
    95% bootstrap interval [low, high] of evaluation metrics when evaluate computed one (from
    `report`, our reports/metrics.json), and the spread over seeds of our quality metrics."""
    rows = [_row(key, figure, unit, reference[key], ours[key]) for key, figure, unit in SPEED_ROWS]
    rows.append(
        _row("images_per_second_ratio", "images/s ratio, ours / reference", "x", None, ratio)
    )
    rows.append(
        _row(
            "val_accuracy",
            "validation accuracy (own split)",
            "",
            reference["val_accuracy"],
            ours["val_accuracy"],
        )
    )
    rows.append(_test_row("raw_test", "accuracy", "accuracy", reference, ours))
    for name, figure in TEST_ROWS:
        rows.append(_test_row("clean_test", name, figure, reference, ours))
    spread = seeds["spread"]
    rows.append(
        _row(
            "melanoma_threshold",
            f"alert threshold (chosen on {report.operating_point.chosen_on})",
            "",
            None,
            report.operating_point.threshold,
            spread=spread["melanoma_threshold"],
        )
    )
    for rule, delivered in report.threshold_rules.items():
        for set_name, half in delivered.reporting_halves.items():
            for name in ("sensitivity", "specificity"):
                key = f"rule_{rule}_{set_name}_{name}"
                rows.append(
                    _row(
                        key,
                        f"threshold chosen on {rule}: {name} on {set_name}'s reporting half",
                        "",
                        None,
                        getattr(half, name),
                        spread=spread[key],
                    )
                )
    for set_name, section in report.sections():
        for name, figure in SEED_METRICS:
            key = f"{set_name}_{name}"
            interval = section.interval(name) if name in EVALUATION_METRICS else None
            rows.append(
                _row(
                    key,
                    f"{set_name}: {figure} ({section.images} images)",
                    "",
                    None,
                    getattr(section, name),
                    ours_ci=None if interval is None else list(interval),
                    spread=spread[key],
                )
            )
    predict = ours["predict"]
    rows += [
        *(
            _row(f"stage_seconds_{stage}", f"stage {stage}, clean workspace", "s", None, seconds)
            for stage, seconds in ours["stage_seconds"].items()
        ),
        _row(
            "full_repro_seconds",
            "whole dvc repro, clean workspace (the stages above, summed)",
            "s",
            None,
            ours["full_repro_seconds"],
        ),
        _row(
            "head_only_repro_seconds",
            f"dvc repro after a head-only change (ran {', '.join(ours['head_only_stages_run'])})",
            "s",
            None,
            ours["head_only_repro_seconds"],
        ),
        _row(
            "noop_repro_seconds",
            "dvc repro, nothing changed",
            "s",
            None,
            ours["noop_repro_seconds"],
        ),
        _row(
            "predict_p50_ms",
            f"predict one image, p50 ({predict['images']} images)",
            "ms",
            None,
            predict["p50_ms"],
        ),
        _row(
            "predict_p95_ms",
            f"predict one image, p95 ({predict['images']} images)",
            "ms",
            None,
            predict["p95_ms"],
        ),
        _row(
            "training_peak_rss_mib",
            "peak memory: training process (ours: largest pipeline process)",
            "MiB",
            reference["peak_rss_mib"],
            ours["peak_rss_mib"],
        ),
        _row(
            "predict_peak_rss_mib",
            "peak memory: predict process",
            "MiB",
            None,
            predict["peak_rss_mib"],
        ),
        *serving_rows(ours["serving"]),
        _row(
            "reproducible",
            "second train + evaluate: identical test metrics",
            "yes/no",
            None,
            ours["reproducible"],
        ),
        _row(
            "champion_kept_over_seeds",
            f"champion kept by the other {len(seeds['seeds']) - 1} seed(s)' trainings",
            "yes/no",
            None,
            not seeds["champion_moved_by"],
        ),
    ]
    return rows


# (key in the serving JSON, figure) of each measured way of sending images.
SERVING_RUNS = [
    ("single_client", "1 client, 1 image/request"),
    ("concurrent_clients", "8 clients, 1 image/request"),
    ("batched", "1 client, 32 images/request"),
]


def serving_rows(serving: dict) -> list[dict]:
    """The rows of bench.serving: the champion behind `mlflow models serve` on loopback."""
    rows = []
    for key, how in SERVING_RUNS:
        run = serving[key]
        rows += [
            _row(f"serve_{key}_p50_ms", f"served, {how}: p50 latency", "ms", None, run["p50_ms"]),
            _row(f"serve_{key}_p95_ms", f"served, {how}: p95 latency", "ms", None, run["p95_ms"]),
            _row(
                f"serve_{key}_requests_per_second",
                f"served, {how}: requests/s",
                "requests/s",
                None,
                run["requests_per_second"],
            ),
            _row(
                f"serve_{key}_images_per_second",
                f"served, {how}: images/s",
                "images/s",
                None,
                run["images_per_second"],
            ),
        ]
    return rows + [
        _row(
            "serve_body_bytes_per_image",
            "served: request body bytes per image (`melanoma request`)",
            "bytes",
            None,
            serving["body_bytes_per_image"],
        ),
        _row(
            "serve_body_bytes_per_file_byte",
            "served: request body bytes / image file bytes",
            "x",
            None,
            serving["body_bytes_per_file_byte"],
        ),
        _row(
            "serve_peak_rss_mib",
            "served: peak memory of the server (largest process, 1 worker)",
            "MiB",
            None,
            serving["largest_process_peak_rss_mib"],
        ),
        _row(
            "serve_max_abs_difference",
            "served vs `melanoma predict`: largest probability difference",
            "",
            None,
            serving["max_abs_difference_from_predict"],
        ),
    ]


def _test_row(split: str, name: str, figure: str, reference: dict, ours: dict) -> dict:
    images = ours[split]["images"]
    where = "raw Test folder" if split == "raw_test" else "clean test split"
    return _row(
        f"{split}_{name}",
        f"{figure}, {where} ({images} images)",
        "",
        reference[split][name],
        ours[split][name],
        _interval(reference[split], name),
        _interval(ours[split], name),
    )


def _interval(report: dict, name: str) -> list[float] | None:
    low, high = report.get(f"{name}_ci_low"), report.get(f"{name}_ci_high")
    return None if low is None or high is None else [low, high]


def _row(
    key: str,
    figure: str,
    unit: str,
    reference: float | None,
    ours: float | bool | None,
    reference_ci: list[float] | None = None,
    ours_ci: list[float] | None = None,
    spread: dict | None = None,
) -> dict:
    return {
        "key": key,
        "figure": figure,
        "unit": unit,
        "reference": reference,
        "reference_ci": reference_ci,
        "ours": ours,
        "ours_ci": ours_ci,
        "spread": spread,
    }


def format_table(results: dict) -> str:
    """The table as fixed-width text: figure, unit, reference, ours (first seed, with its
    interval), and ours over all seeds (mean ± sd, range)."""
    seeds = len(results["seeds"]["seeds"])
    cells = [
        ("figure", "unit", "reference", "ours", f"ours over {seeds} seed(s): mean ± sd [range]")
    ]
    for row in results["table"]:
        cells.append(
            (
                row["figure"],
                row["unit"],
                _format(row["reference"], row["unit"], row["reference_ci"]),
                _format(row["ours"], row["unit"], row["ours_ci"]),
                _format_spread(row["spread"]),
            )
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    tiny = results["data"]["tiny_source_files_per_class"]
    title = (
        f"Benchmark ({results['mode']}) on {', '.join(results['sources'])}"
        + (f" (tiny subset, files per class: {tiny})" if tiny else "")
        + f", {results['machine']['cpus']} CPUs"
    )
    return "\n".join([title, *lines])


def _format(value: float | bool | None, unit: str, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return "undefined"
    if unit == "count":
        return str(int(value))
    if unit == "" and 0 < abs(value) < 0.001:
        return f"{value:.1e}"  # a difference of probabilities: 3 decimals would show 0.000
    digits = {"": 3, "x": 2}.get(unit, 1)
    text = f"{value:.{digits}f}"
    if interval:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _format_spread(spread: dict | None) -> str:
    if not spread or not spread["n"]:
        return "-"
    return f"{spread['mean']:.3f} ± {spread['std']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}]"


if __name__ == "__main__":
    main()
