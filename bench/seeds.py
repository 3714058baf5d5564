"""Training seeds: the same params trained again with other `train.seed` values, in the copy the
benchmark already ran, and the spread of every quality figure over them."""

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from bench.pipeline import stages_run
from bench.process import run_command
from bench.project import override_params
from melanoma import paths
from melanoma.config import PARAMS_FILE
from melanoma.params.model import TrainParams
from melanoma.reports import MetricsReport, RunInfo

log = logging.getLogger(__name__)

# (metric, as the table names it) of each evaluation set whose spread is reported.
SEED_METRICS = [
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("melanoma_auc", "melanoma-vs-rest ROC AUC"),
    ("melanoma_sensitivity", "melanoma sensitivity at its threshold"),
    ("melanoma_specificity", "melanoma specificity at its threshold"),
    ("ece", "expected calibration error"),
]


def independent_seeds(train: TrainParams, count: int) -> list[int]:
    """`count` values of train.seed, the params' own first, whose models share no member: an
    ensemble of k trains seeds seed, ..., seed + k - 1, so the next independent one is seed + k."""
    return [train.seed + n * train.ensemble for n in range(count)]


def registry_decision(copy: Path, tracking_uri: str) -> str:
    """What register decided for the model trained last in `copy` (promoted | kept)."""
    run_id = RunInfo.read(copy / paths.RUN_FILE).run_id
    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags["registry.decision"]


def train_more_seeds(
    copy: Path, env: Mapping[str, str], logs: Path, seeds: list[int], tracking_uri: str
) -> list[dict]:
    """For each seed: set train.seed, `dvc repro` (train and evaluate run again), and keep the
    report and the registry's decision. Returns one {seed, metrics, decision, seconds,
    stages_run} per seed, metrics as read by melanoma.reports: the first seed's `dvc repro` is
    also the benchmark's change of what trains."""
    runs = []
    for seed in seeds:
        override_params(copy / PARAMS_FILE, {"train.seed": seed})
        seconds, output = run_command(
            ["dvc", "repro"], copy, env, logs / f"dvc_repro_seed_{seed}.log"
        )
        runs.append(
            {
                "seed": seed,
                "metrics": MetricsReport.read(copy / paths.METRICS_FILE),
                "decision": registry_decision(copy, tracking_uri),
                "seconds": seconds,
                "stages_run": stages_run(output),
            }
        )
        log.info("seed %d: champion %s", seed, runs[-1]["decision"])
    return runs


def spread(values: list[float | None]) -> dict:
    """Mean, sample standard deviation and range of the defined values."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(defined),
        "mean": float(np.mean(defined)),
        "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0,
        "min": float(min(defined)),
        "max": float(max(defined)),
    }


def seed_spread(reports: list[MetricsReport]) -> dict[str, dict]:
    """`<set>_<metric>` -> spread over the reports (reports/metrics.json of each seed), for every
    set (test, then each external set) and SEED_METRICS, and the alert threshold."""
    table = {"melanoma_threshold": spread([r.operating_point.threshold for r in reports])}
    for set_name, _ in reports[0].sections():
        sections = [dict(r.sections())[set_name] for r in reports]
        for metric, _ in SEED_METRICS:
            table[f"{set_name}_{metric}"] = spread([getattr(s, metric) for s in sections])
    # What each threshold rule delivered on the reporting halves of the external sets.
    for rule, delivered in reports[0].threshold_rules.items():
        for set_name in delivered.reporting_halves:
            halves = [r.threshold_rules[rule].reporting_halves[set_name] for r in reports]
            for name in ("sensitivity", "specificity"):
                table[f"rule_{rule}_{set_name}_{name}"] = spread([getattr(h, name) for h in halves])
    return table
