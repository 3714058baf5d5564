"""Local PostgreSQL and MLflow servers for the team tests: loopback only, a free port each,
bounded waits, and always stopped, even when the test fails."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.process import stop_group

VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT = 90  # seconds; a first start creates MLflow's tables, ~10 s on 2 busy cores
# PostgreSQL refuses to run as root: as root, its processes run as this system user (Debian's
# postgresql package creates it).
POSTGRES_USER = "postgres"


class ServerUnavailable(RuntimeError):
    """A server could not be started on this machine (the reason is the message)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http(
    method: str,
    url: str,
    body: dict | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict | str]:
    """(status, JSON answer, or the text if it is not JSON), without raising on 4xx/5xx."""
    request = urllib.request.Request(url, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _postgres_bin() -> Path:
    """The directory of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if not versions:
        raise ServerUnavailable(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            "`.ci/run` installs Debian's postgresql package"
        )
    return versions[-1].parent


def _run_as_postgres_owner(
    command: list[str], workdir: Path, timeout: float
) -> subprocess.CompletedProcess:
    user = POSTGRES_USER if os.geteuid() == 0 else None
    return subprocess.run(
        command, cwd=workdir, user=user, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def postgres_server(database: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields a SQLAlchemy URI of an
    empty `database` (user `mlflow`, trust authentication: loopback only, never a team set-up).

    Raises ServerUnavailable, saying why, if PostgreSQL is missing or cannot start.
    """
    bin_dir = _postgres_bin()
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-postgres-"))
    try:
        if os.geteuid() == 0:
            try:
                shutil.chown(workdir, POSTGRES_USER, POSTGRES_USER)
            except LookupError:
                raise ServerUnavailable(
                    f"running as root and there is no {POSTGRES_USER!r} user to run PostgreSQL"
                ) from None
        data, port = workdir / "data", free_port()
        log = workdir / "server.log"

        def run(*command: object) -> None:
            done = _run_as_postgres_owner([str(part) for part in command], workdir, 60)
            if done.returncode != 0:
                raise ServerUnavailable(
                    f"PostgreSQL could not start: `{' '.join(map(str, command))}` said\n"
                    f"{done.stdout}{done.stderr}{log.read_text()[-2000:] if log.exists() else ''}"
                )

        run(bin_dir / "initdb", "-D", data, "-U", "mlflow", "-A", "trust", "--no-sync")
        # No TCP beyond loopback, the socket file in the work dir, no fsync: a test database
        # is thrown away.
        options = f"-c listen_addresses={HOST} -p {port} -k {workdir} -c fsync=off"
        try:
            run(bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "30", "-o", options, "start")
            run(bin_dir / "createdb", "-h", HOST, "-p", port, "-U", "mlflow", database)
            yield f"postgresql://mlflow@{HOST}:{port}/{database}"
        finally:
            _run_as_postgres_owner(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                workdir,
                60,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts: Path,
    log_file: Path,
    *,
    app_name: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """`mlflow server` on a free loopback port with proxied artifacts in `artifacts`; yields its
    URL once /health answers. Its output goes to log_file; it is stopped on exit.
    """
    port = free_port()
    command = [
        str(VENV_BIN / "mlflow"),
        "server",
        *("--backend-store-uri", backend_store_uri),
        *("--artifacts-destination", str(artifacts)),
        *("--host", HOST, "--port", str(port), "--workers", "1"),
    ]
    if app_name:
        command += ["--app-name", app_name]
    # The job runner (GenAI background jobs) starts seven more processes that the tests never use.
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    url = f"http://{HOST}:{port}"
    with open(log_file, "w") as log:
        # Its own process group: uvicorn starts workers, and all must go when the test ends.
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{log_file.read_text()[-3000:]}")
            try:
                if http("GET", f"{url}/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not ready after {START_TIMEOUT} s:\n"
                    f"{log_file.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        stop_group(server)
