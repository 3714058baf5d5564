"""Our pipeline, timed in a clean copy of the project: every stage of a clean `dvc repro` (one
`dvc repro -s` each, in the DAG's order, so each stage's time is known) and a no-op `dvc repro`;
then a change of what trains (another seed, or half the learning rate), and the params put
back, which trains and evaluates a second time: the test metrics must reproduce."""

import logging
import re
import resource
from collections.abc import Mapping
from pathlib import Path

import yaml

from bench.process import peak_rss_mib, run_command
from bench.project import override_params
from melanoma import paths
from melanoma.config import PARAMS_FILE
from melanoma.reports import MetricsReport, TrainMetrics, ValidationReport

log = logging.getLogger(__name__)

RUNNING_STAGE = re.compile(r"Running stage '([^']+)'")


def stages_run(dvc_output: str) -> list[str]:
    """The stages a `dvc repro` ran (not those it skipped or restored from the run cache)."""
    return RUNNING_STAGE.findall(dvc_output)


def changed_metrics(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Names of the figures that differ between two reports/metrics.json contents."""
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def run_pipeline(copy: Path, env: Mapping[str, str], logs: Path) -> dict:
    """Run the pipeline in `copy` (a fresh copy_project with no outputs yet) and return its
    timings, reports (`train_metrics` and `test_metrics` as read by melanoma.reports), peak
    memory and a no-op `dvc repro`'s; `reproduce` later trains it again."""
    stage_seconds = {}
    for stage in yaml.safe_load((copy / "dvc.yaml").read_text())["stages"]:
        seconds, output = run_command(
            ["dvc", "repro", "-s", stage], copy, env, logs / f"dvc_repro_{stage}.log"
        )
        if stages_run(output) != [stage]:
            raise RuntimeError(f"`dvc repro -s {stage}` in {copy} did not run it: not clean")
        stage_seconds[stage] = seconds
    noop_seconds, output = run_command(["dvc", "repro"], copy, env, logs / "dvc_repro_noop.log")
    noop_stages = stages_run(output)
    if noop_stages:
        log.warning("`dvc repro` with nothing changed ran %s", noop_stages)
    return {
        "full_repro_seconds": sum(stage_seconds.values()),
        "stage_seconds": stage_seconds,
        "noop_repro_seconds": noop_seconds,
        "noop_repro_stages_run": noop_stages,
        "train_metrics": TrainMetrics.read(copy / paths.TRAIN_METRICS),
        "test_metrics": MetricsReport.read(copy / paths.METRICS_FILE),
        "test_predictions": (copy / paths.PREDICTIONS_FILE).read_text(),
        "validation_removed": ValidationReport.read(copy / paths.VALIDATION_REPORT).removed,
        # Every process of the pipeline (dvc and its stages) is a descendant that has ended.
        "peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
    }


def head_only_change(copy: Path, env: Mapping[str, str], logs: Path) -> dict:
    """Half the learning rate (what `dvc exp run -S train.learning_rate=...` runs): the seconds
    of the `dvc repro` and the stages it ran."""
    rate = yaml.safe_load((copy / PARAMS_FILE).read_text())["train"]["learning_rate"]
    override_params(copy / PARAMS_FILE, {"train.learning_rate": rate / 2})
    seconds, output = run_command(["dvc", "repro"], copy, env, logs / "dvc_repro_head_only.log")
    return {"head_only_repro_seconds": seconds, "head_only_stages_run": stages_run(output)}


def reproduce(copy: Path, env: Mapping[str, str], logs: Path, ours: dict, train: dict) -> dict:
    """The train params `train` put back as `ours` (run_pipeline's result) ran them, after a
    change of what trains: train and evaluate run a second time on the same params (train's
    uncached outputs keep it out of DVC's run cache), and the test metrics and predictions must
    be the same. Pops `test_predictions` from `ours`."""
    override_params(copy / PARAMS_FILE, {f"train.{key}": value for key, value in train.items()})
    seconds, output = run_command(["dvc", "repro"], copy, env, logs / "dvc_repro_again.log")
    if "train" not in stages_run(output):
        raise RuntimeError(f"`dvc repro` with the params put back did not train again: {output}")
    again = MetricsReport.read(copy / paths.METRICS_FILE)
    differences = changed_metrics(ours["test_metrics"].to_dict(), again.to_dict())
    if (copy / paths.PREDICTIONS_FILE).read_text() != ours.pop("test_predictions"):
        differences.append(str(paths.PREDICTIONS_FILE))
    log.info(
        "second train + evaluate: %s",
        f"differs in {differences}" if differences else "identical test metrics",
    )
    return {
        "rerun_train_evaluate_seconds": seconds,
        "reproducible": not differences,
        "reproducibility_differences": differences,
    }
