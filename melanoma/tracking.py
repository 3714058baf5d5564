"""Where MLflow runs go: the store under mlruns/ unless MLFLOW_TRACKING_URI says otherwise."""

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from melanoma.params.evaluation import MlflowParams

log = logging.getLogger(__name__)

PIPELINE_OUTPUTS = ("reports", "models", "dvc.lock")


def configure_tracking(params: MlflowParams) -> str:
    """Point MLflow at the store and experiment of params; return the experiment id.

    The default is a SQLite database and an artifact folder, both under mlruns/: no server to
    start, and the registry works (it needs a database-backed store).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
    if uri.startswith("sqlite:///"):
        database = project_root() / uri.removeprefix("sqlite:///")
        database.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{database}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is not None:
        return experiment.experiment_id
    # A remote server chooses its own artifact root (it proxies artifacts); a local store
    # keeps them beside its database.
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = (project_root() / params.artifact_location).resolve().as_uri() if local else None
    log.info("creating MLflow experiment %r in %s", params.experiment, uri)
    return mlflow.create_experiment(params.experiment, artifact_location=location)


def project_root() -> Path:
    """The repository the pipeline belongs to.

    `dvc exp run --queue` runs stages in a temporary copy under .dvc/tmp/exps/ that is deleted
    afterwards; DVC_ROOT names the real repository, so runs land in the project's own store.
    """
    return Path(os.environ.get("DVC_ROOT", "."))


def experiment_run_tags() -> dict[str, str]:
    """Name and tag a run after the DVC experiment that made it, so the MLflow UI can tell
    the runs of a sweep apart; empty outside `dvc exp run`."""
    name = os.environ.get("DVC_EXP_NAME")
    return {"mlflow.runName": name, "dvc_experiment": name} if name else {}


def git_commit() -> str:
    """The commit the code ran from ('-dirty' if code, params or data pointers had changes;
    'unknown' outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # The pipeline's own outputs are left out: DVC deletes a stage's tracked outputs
        # (reports/, models/run.json) before running it, and rewrites dvc.lock after.
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                *(f":!{output}" for output in PIPELINE_OUTPUTS),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


@contextmanager
def runs_end_as_killed() -> Iterator[None]:
    """While inside, SIGTERM (CI cancelling, `dvc queue kill`) and SIGINT (Ctrl-C) end the active
    MLflow run as KILLED, then exit with the signal's conventional status (128 + its number).

    Without it a killed stage leaves its run RUNNING in the UI forever: nothing in MLflow ends it.
    """

    def end_run_and_exit(signal_number: int, _frame: object) -> None:
        name = signal.Signals(signal_number).name
        run = mlflow.active_run()
        if run is not None:
            log.error("%s: ending MLflow run %s as KILLED", name, run.info.run_id)
            mlflow.end_run(status="KILLED")
        sys.exit(128 + signal_number)

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.signal(number, end_run_and_exit) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
