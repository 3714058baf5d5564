"""The served model under load: a real `mlflow models serve` on loopback, real image files.

The request bodies are what `melanoma request` writes for the files (run once on all of them;
a one-image body is exactly what `melanoma request <file>` writes). Then, each pass over every
file, in this order: one client sending one image per request; 8 concurrent clients doing the
same; one client sending requests of BATCH_IMAGES images. Reported: p50/p95 latency, requests/s
and images/s of each, request body bytes per image (and per byte of image file), the server's
peak memory, and the served probabilities of every file, for comparison with `melanoma
predict`'s. Run as a subprocess by bench.run, or on its own:

    python -m bench.serving --model models:/melanoma-cnn@champion --images DIR --out FILE
"""

import argparse
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.process import stop_group
from bench.project import PROJECT, VENV_BIN, command_env
from melanoma.config import PARAMS_FILE, load_params
from melanoma.labels import LABELS
from melanoma.logs import setup_logging

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT = 180  # seconds: the server imports TensorFlow and loads the model first
CONCURRENT_CLIENTS = 8
BATCH_IMAGES = 32
WARM_UP_REQUESTS = 5


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextmanager
def model_server(
    model_uri: str,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    workers: int = 1,
) -> Iterator[tuple[str, int]]:
    """`mlflow models serve -m model_uri --env-manager local` on a free loopback port; yields
    (its URL, the process id of the group leader) once /ping answers. Its output goes to
    log_file; the whole process group is stopped on exit."""
    port = free_port()
    command = [
        str(VENV_BIN / "mlflow"),
        *("models", "serve", "-m", model_uri, "--env-manager", "local"),
        *("--host", HOST, "-p", str(port), "--workers", str(workers)),
    ]
    url = f"http://{HOST}:{port}"
    with open(log_file, "w") as output:
        # Its own process group: mlflow starts uvicorn, and both must go at the end.
        server = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env or command_env(),
            cwd=cwd,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass  # not listening yet
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"`{' '.join(command)}` did not come up:\n{log_file.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url, server.pid
    finally:
        stop_group(server)


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    """(HTTP status, JSON answer) of a POST to the server's /invocations; no raise on 4xx."""
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except json.JSONDecodeError:
            return error.code, {"message": text}


def group_memory_mib(leader: int) -> dict[str, float]:
    """Peak resident memory (VmHWM) of the largest process of the server's process group, and
    the current resident memory of the whole group (VmRSS summed), in MiB."""
    peak, total = 0.0, 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if os.getpgid(int(status.parent.name)) != leader:
                continue
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except (OSError, ProcessLookupError):
            continue  # ended meanwhile
        peak = max(peak, int(fields["VmHWM"].split()[0]) / 1024)
        total += int(fields["VmRSS"].split()[0]) / 1024
    return {"largest_process_peak_rss_mib": peak, "group_rss_mib": total}


def request_bodies(paths: list[Path], params: Path) -> list[str]:
    """Base64 of each file, as `melanoma request` writes them (one run over all the files)."""
    command = [str(VENV_BIN / "melanoma"), "--params", str(params), "request", *map(str, paths)]
    done = subprocess.run(
        command, cwd=PROJECT, env=command_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`melanoma request` failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)["inputs"]


def body(images: list[str]) -> bytes:
    return json.dumps({"inputs": images}, separators=(",", ":")).encode()


def timed_requests(url: str, bodies: list[bytes], clients: int) -> dict:
    """Send every body once from `clients` concurrent clients; latency and throughput."""

    def send(one: bytes) -> tuple[float, dict]:
        started = time.perf_counter()
        status, answer = post(url, one)
        if status != 200:
            raise RuntimeError(f"the server answered {status}: {answer}")
        return (time.perf_counter() - started) * 1000, answer

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, bodies))
    seconds = time.perf_counter() - started
    milliseconds = [ms for ms, _ in results]
    images = sum(len(answer["predictions"]) for _, answer in results)
    p50, p95 = np.percentile(milliseconds, [50, 95])
    return {
        "clients": clients,
        "requests": len(bodies),
        "images": images,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "requests_per_second": len(bodies) / seconds,
        "images_per_second": images / seconds,
        "answers": [answer for _, answer in results],
    }


def serving_benchmark(
    model_uri: str,
    paths: list[Path],
    params: Path,
    logs: Path,
    env: dict[str, str],
    workers: int = 1,
) -> dict:
    """Serve model_uri (looked up in env's MLFLOW_TRACKING_URI) and measure it on `paths` (see
    the module docstring)."""
    encoded = request_bodies(paths, params)
    singles = [body([image]) for image in encoded]
    batches = [
        body(encoded[start : start + BATCH_IMAGES])
        for start in range(0, len(encoded), BATCH_IMAGES)
    ]
    file_bytes = [path.stat().st_size for path in paths]
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / "serving_server.log"
    with model_server(model_uri, log_file, env, workers=workers) as (url, leader):
        started = time.perf_counter()
        for one in singles[:WARM_UP_REQUESTS]:
            post(url, one)
        warm_up_seconds = time.perf_counter() - started
        single = timed_requests(url, singles, 1)
        concurrent = timed_requests(url, singles, CONCURRENT_CLIENTS)
        batched = timed_requests(url, batches, 1)
        memory = group_memory_mib(leader)
    answers = [item for answer in single.pop("answers") for item in answer["predictions"]]
    for run in (concurrent, batched):
        run.pop("answers")
    return {
        "model_uri": model_uri,
        "workers": workers,
        "images": len(paths),
        "warm_up_requests": WARM_UP_REQUESTS,
        "warm_up_seconds": warm_up_seconds,
        "single_client": single,
        "concurrent_clients": concurrent,
        "batched": {**batched, "images_per_request": BATCH_IMAGES},
        "body_bytes_per_image": float(np.mean([len(one) for one in singles])),
        "body_bytes_per_file_byte": float(
            np.mean([len(one) / size for one, size in zip(singles, file_bytes, strict=True)])
        ),
        **memory,
        "predictions": {
            "path": [str(path) for path in paths],
            "probabilities": [[a["probabilities"][label] for label in LABELS] for a in answers],
            "melanoma_alert": [a["melanoma_alert"] for a in answers],
            "melanoma_threshold": answers[0]["melanoma_threshold"],
        },
    }


def tracking_uri(params: Path) -> str:
    """MLFLOW_TRACKING_URI, or the params' store, a relative SQLite path made absolute (the
    project's, whatever the current directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or load_params(params).mlflow.tracking_uri
    database = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and not Path(database).is_absolute():
        return f"sqlite:///{PROJECT / database}"
    return uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="model URI to serve (models:/name@alias)")
    parser.add_argument("--images", type=Path, required=True, help="folder of image files")
    parser.add_argument("--params", type=Path, default=PROJECT / PARAMS_FILE)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--logs", type=Path, default=PROJECT / "bench" / "results" / "logs")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    args = parser.parse_args(argv)
    setup_logging()

    from melanoma.inference.predict import find_images

    paths = find_images([args.images])
    if not paths:
        raise SystemExit(f"{args.images}: no image file to send")
    env = command_env(MLFLOW_TRACKING_URI=tracking_uri(args.params))
    result = serving_benchmark(args.model, paths, args.params, args.logs, env, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, allow_nan=False))
    for name in ("single_client", "concurrent_clients", "batched"):
        run = result[name]
        log.info(
            "%s: p50 %.1f ms, p95 %.1f ms, %.1f requests/s, %.1f images/s",
            name,
            run["p50_ms"],
            run["p95_ms"],
            run["requests_per_second"],
            run["images_per_second"],
        )
    log.info(
        "body %.0f bytes per image (%.2f x the file); server: largest process peak RSS %.0f "
        "MiB, all its processes %.0f MiB; wrote %s",
        result["body_bytes_per_image"],
        result["body_bytes_per_file_byte"],
        result["largest_process_peak_rss_mib"],
        result["group_rss_mib"],
        args.out,
    )


if __name__ == "__main__":
    main()
