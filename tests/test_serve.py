"""The champion served by MLflow's own scoring server, as the README shows it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from melanoma.labels import LABELS
from melanoma.model.predict import serving_request
from melanoma.registry.promotion import Decision, record_decision

# End to end (a `dvc repro` or a server): `make test-fast` leaves it out; `make test` and CI
# run it.
pytestmark = pytest.mark.slow

STARTUP_SECONDS = 90


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture
def served_champion(mlflow_project, tiny_classifier, log_model, tmp_path):
    """(URL of a running `mlflow models serve` of models:/melanoma-test@champion, the model).

    The server runs in its own process group, which is always ended after the test."""
    model = tiny_classifier()
    _, uri = log_model(model)
    mlflow.register_model(uri, "melanoma-test")
    record_decision(mlflow.MlflowClient(), "melanoma-test", "1", Decision(True, "first"))

    port = _free_port()
    bin_dir = Path(sys.executable).parent
    # The server starts `uvicorn` by name: it must be on PATH, as it is in an activated venv.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_file = tmp_path / "serve.log"
    with open(log_file, "w") as log:
        server = subprocess.Popen(
            [
                str(bin_dir / "mlflow"),
                "models",
                "serve",
                "-m",
                "models:/melanoma-test@champion",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not come up:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, model
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_served_champion_answers_images_and_refuses_bad_payloads(served_champion, image_bytes):
    url, model = served_champion
    paths = []
    for seed in (1, 2):
        path = Path(f"photo{seed}.jpg")
        path.write_bytes(image_bytes(seed, (40, 30)))
        paths.append(path)
    body = serving_request(paths, ingest_size=32, model_size=16, max_pixels=1_000_000)

    status, answer = _post(f"{url}/invocations", json.dumps(body).encode())
    assert status == 200
    probabilities = np.array(answer["predictions"])
    assert probabilities.shape == (2, len(LABELS))
    expected = model.predict(np.array(body["inputs"], np.uint8), verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)

    status, answer = _post(f"{url}/invocations", b'{"inputs": [[1, 2, 3]]}')
    assert status == 400
    assert "does not match expected shape" in answer["message"]
