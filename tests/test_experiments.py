"""Queued DVC experiments: each is its own MLflow run, named and tagged after the experiment,
with its params logged so that the MLflow UI compares the runs side by side."""

import pytest
import yaml
from mlflow import MlflowClient

# End to end (a `dvc repro` or a server): `make test-fast` leaves it out; `make test` and CI
# run it. That a head-only change re-uses the cached features is checked by the quick
# benchmark's test (tests/test_bench.py), which makes that change anyway.
pytestmark = pytest.mark.slow

# Both differ from the baseline's params, so DVC's run cache cannot skip their training.
EXPERIMENTS = {
    "tiny-dropout-01": {"train.dropout": "0.1", "train.epochs": "1"},
    "tiny-dropout-05": {"train.dropout": "0.5", "train.epochs": "2"},
}


def test_two_queued_experiments_log_two_comparable_mlflow_runs(pipeline_repo, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    repo = pipeline_repo.clone(tmp_path / "repo", store, share_cache=True)
    for name, params in EXPERIMENTS.items():
        overrides = [arg for key, value in params.items() for arg in ("-S", f"{key}={value}")]
        repo.run("dvc", "exp", "run", "--queue", "--name", name, *overrides)

    repo.run("dvc", "exp", "run", "--run-all", timeout=600)

    # `--run-all` exits 0 even if an experiment failed: what finished is what `exp list` shows.
    failed = set(EXPERIMENTS) - set(repo.run("dvc", "exp", "list", "--name-only").split())
    assert not failed, repo.run("dvc", "queue", "status") + "".join(
        repo.run("dvc", "queue", "logs", name) for name in sorted(failed)
    )
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    runs = {
        run.data.tags.get("dvc_experiment"): run
        for run in client.search_runs([experiment.experiment_id])
    }
    assert set(runs) == set(EXPERIMENTS)
    for name, overrides in EXPERIMENTS.items():
        run = runs[name]
        assert run.info.run_name == name
        assert {key: run.data.params[key] for key in overrides} == overrides
        epochs = int(overrides["train.epochs"])
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == epochs
        assert "test_balanced_accuracy" in run.data.metrics  # evaluate logged into the same run
    versions = client.search_model_versions(f"name='{params['registry']['model_name']}'")
    assert {v.run_id for v in versions} == {run.info.run_id for run in runs.values()}
