"""The team set-up: the pipeline against an `mlflow server` on PostgreSQL with proxied
artifacts, and MLflow's basic-auth app refusing requests without credentials."""

import json
import secrets
from contextlib import ExitStack

import pytest
import yaml
from mlflow import MlflowClient
from servers import ServerUnavailable, http, mlflow_server, postgres_server

# End to end (a `dvc repro` or a server): `make test-fast` leaves it out; `make test` and CI
# run it.
pytestmark = pytest.mark.slow

CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def postgres_uri():
    """A throwaway PostgreSQL database (Debian's postgresql package, installed by .ci/run)."""
    with ExitStack() as stack:
        try:
            uri = stack.enter_context(postgres_server())
        except ServerUnavailable as reason:
            pytest.skip(f"PostgreSQL cannot start on this machine: {reason}")
        yield uri


def test_pipeline_tracks_and_registers_on_a_postgresql_backed_server(
    postgres_uri, pipeline_repo, tmp_path
):
    artifacts = tmp_path / "artifacts"
    with mlflow_server(postgres_uri, artifacts, tmp_path / "mlflow-server.log") as url:
        repo = pipeline_repo.clone(tmp_path / "repo", url, share_cache=True)
        params = yaml.safe_load((repo.root / "params.yaml").read_text())
        params["train"]["epochs"] = epochs = 2
        (repo.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

        reproduced = repo.run("dvc", "repro")

        assert "Running stage 'train'" in reproduced and "Running stage 'evaluate'" in reproduced
        run_id = json.loads((repo.root / "models" / "run.json").read_text())["run_id"]
        api = f"{url}/api/2.0/mlflow"
        status, answer = http("GET", f"{api}/runs/get?run_id={run_id}")
        assert status == 200, answer
        run = answer["run"]
        assert run["info"]["status"] == "FINISHED"
        # Proxied: clients send artifacts to the server, which writes them to its destination.
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
        logged = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert logged["train.epochs"] == str(epochs)
        for curve in CURVES:
            status, history = http(
                "GET", f"{api}/metrics/get-history?run_id={run_id}&metric_key={curve}"
            )
            assert status == 200, history
            steps = [point["step"] for point in history["metrics"]]
            assert len(steps) == len(set(steps)) == epochs, (curve, history)
        name = params["registry"]["model_name"]
        status, answer = http("GET", f"{api}/registered-models/alias?name={name}&alias=champion")
        assert status == 200, answer
        champion = answer["model_version"]
        assert (champion["version"], champion["run_id"]) == ("1", run_id)
        status, answer = http("GET", f"{api}/artifacts/list?run_id={run_id}")
        assert status == 200, answer
        assert "training_curves.png" in {f["path"] for f in answer["files"]}
        assert list(artifacts.rglob("MLmodel")), "the logged model is not in the server's store"


def test_basic_auth_refuses_requests_without_credentials(tmp_path, monkeypatch):
    password, new_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    with mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        tmp_path / "artifacts",
        tmp_path / "mlflow-server.log",
        app_name="basic-auth",
        env=env,
    ) as url:
        experiments = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"

        assert http("GET", experiments)[0] == 401
        assert http("GET", experiments, auth=("admin", "wrong-password-123"))[0] == 401
        assert http("GET", experiments, auth=("admin", password))[0] == 200

        # The admin adds a team member, who can then work with their own password.
        member_password = secrets.token_urlsafe(16)
        status, answer = http(
            "POST",
            f"{url}/api/2.0/mlflow/users/create",
            {"username": "alice", "password": member_password},
            auth=("admin", password),
        )
        assert status == 200, answer
        # The pipeline's MLflow client authenticates from these two variables.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", member_password)
        experiment_id = MlflowClient(url).create_experiment("made-with-credentials")
        assert MlflowClient(url).get_experiment(experiment_id).name == "made-with-credentials"

        # Changing the admin password, as docs/team.md shows with curl.
        status, answer = http(
            "PATCH",
            f"{url}/api/2.0/mlflow/users/update-password",
            {"username": "admin", "password": new_password, "current_password": password},
            auth=("admin", password),
        )
        assert status == 200, answer
        assert http("GET", experiments, auth=("admin", password))[0] == 401
        assert http("GET", experiments, auth=("admin", new_password))[0] == 200
