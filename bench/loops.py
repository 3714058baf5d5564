"""The loops a contributor pays many times a day, measured in this workspace.

Run from the project root after `make pipeline` (the workspace must be up to date: a no-op is
measured, nothing is trained):

    python -m bench.loops [--repeats 3] [--tests] [--clone]

- `dvc status` and a no-op `dvc repro`: the median of `--repeats` runs, and that `dvc repro`
  ran no stage;
- with `--tests`, `make test-fast` (every test but the slow ones) and `make test`, once each;
- with `--clone`, in a fresh clone beside this one (its data checked out from this DVC cache,
  removed after): a no-op `dvc repro`, the same with 5 saved experiments (`dvc exp save`), and
  a training-only change (`train.learning_rate` halved) timed stage by stage, what
  `dvc exp run -S train.learning_rate=...` runs.

Results are written to bench/results/loops.json and printed. Compare figures measured in one
run: the machine is shared and noisy.
"""

import argparse
import json
import logging
import os
import shutil
import statistics
from pathlib import Path

import yaml

from bench.pipeline import stages_run
from bench.process import run_command
from bench.project import PROJECT, override_params
from bench.run_table import table_row
from melanoma.config import PARAMS_FILE
from melanoma.logs import setup_logging

log = logging.getLogger(__name__)

OUT = PROJECT / "bench" / "results" / "loops.json"
LOGS = PROJECT / "bench" / "results" / "loops"
# The targets on 2 cores, for a workspace in use (a fresh clone: 1.5 s for the no-op).
TARGETS = {
    "noop_repro_seconds": 2.0,
    "test_fast_seconds": 60.0,
    "clone_noop_repro_seconds": 1.5,
    "clone_noop_repro_5_experiments_seconds": 2.0,
    "training_change_evaluate_register_seconds": 60.0,
}
# What each figure is, in the order `python -m bench.run --loops` adds them to its table.
FIGURES = {
    "dvc_status_seconds": "dvc status, this workspace",
    "noop_repro_seconds": "no-op dvc repro, this workspace",
    "clone_first_noop_repro_seconds": "no-op dvc repro, a fresh clone's first",
    "clone_noop_repro_seconds": "no-op dvc repro, a fresh clone",
    "clone_noop_repro_5_experiments_seconds": "no-op dvc repro, a fresh clone, 5 experiments",
    "training_change_train_seconds": "training-only change: train",
    "training_change_evaluate_register_seconds": "training-only change: evaluate + register",
    "test_fast_seconds": "make test-fast",
    "test_seconds": "make test",
}
# Beside the project, so that its relative paths to ../shared resolve as in the project.
CLONE = PROJECT.parent / f".{PROJECT.name}-loops-clone"
EXPERIMENTS = 5
TRAINING_CHANGE = ("train", "evaluate", "register")


def timed(command: list[str], name: str, cwd: Path = PROJECT) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{PROJECT / '.venv' / 'bin'}:{os.environ['PATH']}")
    return run_command(command, cwd, env, LOGS / f"{name}.log")


def noop_repro(repeats: int, name: str, cwd: Path = PROJECT) -> tuple[list[float], list[str]]:
    """Seconds of each of `repeats` no-op `dvc repro` runs, and the stages any of them ran."""
    seconds, ran = [], []
    for _ in range(repeats):
        took, output = timed(["dvc", "repro"], name, cwd)
        seconds.append(took)
        ran += stages_run(output)
    return seconds, sorted(set(ran))


def measure(repeats: int, tests: bool) -> dict:
    results: dict[str, object] = {}
    status = [timed(["dvc", "status"], "dvc_status")[0] for _ in range(repeats)]
    results["dvc_status_seconds"] = statistics.median(status)
    seconds, results["noop_repro_stages_run"] = noop_repro(repeats, "noop_repro")
    results["noop_repro_seconds"] = statistics.median(seconds)
    if tests:
        results["test_fast_seconds"] = timed(["make", "test-fast"], "test_fast")[0]
        results["test_seconds"] = timed(["make", "test"], "test")[0]
    return results


def measure_clone(repeats: int) -> dict:
    """The clone's loops (see the module's docstring); the clone is removed after."""
    if CLONE.exists():
        shutil.rmtree(CLONE)
    results: dict[str, object] = {}
    try:
        timed(["git", "clone", "-q", str(PROJECT), str(CLONE)], "clone", PROJECT.parent)
        cache = ["dvc", "config", "--local"]
        timed([*cache, "cache.dir", str(PROJECT / ".dvc" / "cache")], "clone", CLONE)
        timed([*cache, "cache.type", "hardlink,symlink,copy"], "clone", CLONE)
        timed(["dvc", "checkout", "-q"], "clone_checkout", CLONE)
        seconds, ran = noop_repro(repeats, "clone_noop", CLONE)
        results["clone_noop_repro_seconds"] = statistics.median(seconds)
        # The first run in a fresh clone costs more than the next ones: its own figure.
        results["clone_first_noop_repro_seconds"] = seconds[0]
        for number in range(EXPERIMENTS):
            timed(["dvc", "exp", "save", "-n", f"loops-{number}"], "clone_exp_save", CLONE)
        seconds, ran_too = noop_repro(repeats, "clone_noop_experiments", CLONE)
        results[f"clone_noop_repro_{EXPERIMENTS}_experiments_seconds"] = statistics.median(seconds)
        results["clone_noop_repro_stages_run"] = sorted(set(ran + ran_too))
        params = CLONE / PARAMS_FILE
        rate = yaml.safe_load(params.read_text())["train"]["learning_rate"]
        override_params(params, {"train.learning_rate": rate / 2})
        took: dict[str, float] = {}
        for stage in TRAINING_CHANGE:
            took[stage], _ = timed(["dvc", "repro", "-s", stage], f"clone_{stage}", CLONE)
            results[f"training_change_{stage}_seconds"] = took[stage]
        results["training_change_evaluate_register_seconds"] = took["evaluate"] + took["register"]
    finally:
        shutil.rmtree(CLONE, ignore_errors=True)
    return results


def table_rows(results: dict) -> list[dict]:
    """The loops measured, as rows of bench.run's table (ours only), each with its target."""
    return [
        table_row(
            f"loops_{key}",
            figure + (f" (target <= {TARGETS[key]:g} s)" if key in TARGETS else ""),
            "s",
            None,
            results[key],
        )
        for key, figure in FIGURES.items()
        if key in results
    ]


def measure_all(repeats: int, tests: bool, clone: bool) -> dict:
    """`measure`, then `measure_clone` when asked."""
    results = measure(repeats, tests)
    if clone:
        results |= measure_clone(repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each dvc command")
    parser.add_argument(
        "--tests", action="store_true", help="also time `make test-fast` and `make test`"
    )
    parser.add_argument(
        "--clone", action="store_true", help="also the loops of a fresh clone (minutes)"
    )
    args = parser.parse_args()
    setup_logging()
    results = measure_all(args.repeats, args.tests, args.clone)
    for key in ("noop_repro_stages_run", "clone_noop_repro_stages_run"):
        if results.get(key):
            log.warning("%s: the workspace was not up to date: %s ran", key, results[key])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        target = f"  (target <= {TARGETS[key]:g} s)" if key in TARGETS else ""
        shown = f"{value:.2f} s" if isinstance(value, float) else value
        print(f"{key}: {shown}{target}")


if __name__ == "__main__":
    main()
