"""The benchmark's table: one row per figure (`table_row`), the rows of `python -m bench.run`'s
results and of its scaling run, and the table as the fixed-width text it prints."""

import math

from bench.seeds import SEED_METRICS
from melanoma.reports import EVALUATION_METRICS, MetricsReport

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


def table_rows(
    reference: dict, ours: dict, report: MetricsReport, ratio: float, seeds: dict
) -> list[dict]:
    """One row per figure: reference and ours values (None where a figure is ours only), the
    95% bootstrap interval [low, high] of evaluation metrics when evaluate computed one (from
    `report`, our reports/metrics.json), and the spread over seeds of our quality metrics."""
    rows = [
        table_row(key, figure, unit, reference[key], ours[key]) for key, figure, unit in SPEED_ROWS
    ]
    rows.append(
        table_row("images_per_second_ratio", "images/s ratio, ours / reference", "x", None, ratio)
    )
    rows.append(
        table_row(
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
        table_row(
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
                    table_row(
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
                table_row(
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
            table_row(
                f"stage_seconds_{stage}", f"stage {stage}, clean workspace", "s", None, seconds
            )
            for stage, seconds in ours["stage_seconds"].items()
        ),
        table_row(
            "full_repro_seconds",
            "whole dvc repro, clean workspace (the stages above, summed)",
            "s",
            None,
            ours["full_repro_seconds"],
        ),
        table_row(
            "head_only_repro_seconds",
            f"dvc repro after a head-only change (ran {', '.join(ours['head_only_stages_run'])})",
            "s",
            None,
            ours["head_only_repro_seconds"],
        ),
        table_row(
            "noop_repro_seconds",
            "dvc repro, nothing changed",
            "s",
            None,
            ours["noop_repro_seconds"],
        ),
        table_row(
            "predict_p50_ms",
            f"predict one image, p50 ({predict['images']} images)",
            "ms",
            None,
            predict["p50_ms"],
        ),
        table_row(
            "predict_p95_ms",
            f"predict one image, p95 ({predict['images']} images)",
            "ms",
            None,
            predict["p95_ms"],
        ),
        table_row(
            "training_peak_rss_mib",
            "peak memory: training process (ours: largest pipeline process)",
            "MiB",
            reference["peak_rss_mib"],
            ours["peak_rss_mib"],
        ),
        table_row(
            "predict_peak_rss_mib",
            "peak memory: predict process",
            "MiB",
            None,
            predict["peak_rss_mib"],
        ),
        *serving_rows(ours["serving"]),
        table_row(
            "reproducible",
            "second train + evaluate: identical test metrics",
            "yes/no",
            None,
            ours["reproducible"],
        ),
        table_row(
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
            table_row(
                f"serve_{key}_p50_ms", f"served, {how}: p50 latency", "ms", None, run["p50_ms"]
            ),
            table_row(
                f"serve_{key}_p95_ms", f"served, {how}: p95 latency", "ms", None, run["p95_ms"]
            ),
            table_row(
                f"serve_{key}_requests_per_second",
                f"served, {how}: requests/s",
                "requests/s",
                None,
                run["requests_per_second"],
            ),
            table_row(
                f"serve_{key}_images_per_second",
                f"served, {how}: images/s",
                "images/s",
                None,
                run["images_per_second"],
            ),
        ]
    return rows + [
        table_row(
            "serve_body_bytes_per_image",
            "served: request body bytes per image (`melanoma request`)",
            "bytes",
            None,
            serving["body_bytes_per_image"],
        ),
        table_row(
            "serve_body_bytes_per_file_byte",
            "served: request body bytes / image file bytes",
            "x",
            None,
            serving["body_bytes_per_file_byte"],
        ),
        table_row(
            "serve_peak_rss_mib",
            "served: peak memory of the server (largest process, 1 worker)",
            "MiB",
            None,
            serving["largest_process_peak_rss_mib"],
        ),
        table_row(
            "serve_max_abs_difference",
            "served vs `melanoma predict`: largest probability difference",
            "",
            None,
            serving["max_abs_difference_from_predict"],
        ),
    ]


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
        table_row(
            f"scaling_{key}",
            f"{figure}: {few} images ({subset}) -> {many}: {before:.1f} s -> {after:.1f} s, growth",
            "x",
            None,
            after / before,
        )
        for key, figure, before, after in timings
    ]


def _test_row(split: str, name: str, figure: str, reference: dict, ours: dict) -> dict:
    images = ours[split]["images"]
    where = "raw Test folder" if split == "raw_test" else "clean test split"
    return table_row(
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


def table_row(
    key: str,
    figure: str,
    unit: str,
    reference: float | None,
    ours: float | bool | None,
    reference_ci: list[float] | None = None,
    ours_ci: list[float] | None = None,
    spread: dict | None = None,
) -> dict:
    """One row of the table (bench.loops makes its rows with it too): the figure's values of
    both sides (None where a side has none), their 95% intervals and our spread over seeds."""
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
