import os
import signal
import subprocess
from pathlib import Path

import mlflow
import pytest

from melanoma.tracking import configure_tracking, git_commit, runs_end_as_killed


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def test_commit_is_dirty_for_code_changes_not_for_pipeline_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _git("init", "-q")
    for path in ("params.yaml", "reports/metrics.json", "models/run.json", "dvc.lock"):
        Path(path).parent.mkdir(exist_ok=True)
        Path(path).write_text("1\n")
    _git("add", "-A")
    _git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "c")
    head = _git("rev-parse", "HEAD").strip()

    # What DVC does to a stage's outputs around a run: not a change of the code.
    Path("reports/metrics.json").unlink()
    Path("models/run.json").write_text("2\n")
    Path("dvc.lock").write_text("2\n")
    assert git_commit() == head

    Path("params.yaml").write_text("2\n")
    assert git_commit() == f"{head}-dirty"


def test_outside_git_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert git_commit() == "unknown"


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_active_run_as_killed_and_exits(mlflow_project, signal_number):
    configure_tracking(mlflow_project.mlflow)
    before = signal.getsignal(signal_number)

    with pytest.raises(SystemExit) as stopped, runs_end_as_killed(), mlflow.start_run() as run:
        os.kill(os.getpid(), signal_number)

    assert stopped.value.code == 128 + signal_number
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"
    assert mlflow.active_run() is None
    assert signal.getsignal(signal_number) is before


def test_a_run_that_ends_normally_is_finished(mlflow_project):
    configure_tracking(mlflow_project.mlflow)
    with runs_end_as_killed(), mlflow.start_run() as run:
        pass
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
