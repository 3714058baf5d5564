"""The loops a contributor pays many times a day, measured in this workspace.

Run from the project root after `make pipeline` (the workspace must be up to date: a no-op is
measured, nothing is trained):

    python -m bench.loops [--repeats 3] [--tests]

- `dvc status` and a no-op `dvc repro`: the median of `--repeats` runs, and that `dvc repro`
  ran no stage;
- with `--tests`, `make test-fast` (every test but the slow ones) once, wall time.

Results are written to bench/results/loops.json and printed. Compare figures measured in one
run: the machine is shared and noisy.
"""

import argparse
import json
import logging
import os
import statistics

from bench.pipeline import stages_run
from bench.process import run_command
from bench.project import PROJECT
from melanoma.logs import setup_logging

log = logging.getLogger(__name__)

OUT = PROJECT / "bench" / "results" / "loops.json"
LOGS = PROJECT / "bench" / "results" / "loops"
# The targets on 2 cores, for a workspace in use (a fresh clone: 1.5 s for the no-op).
TARGETS = {"noop_repro_seconds": 2.0, "test_fast_seconds": 60.0}


def timed(command: list[str], name: str) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{PROJECT / '.venv' / 'bin'}:{os.environ['PATH']}")
    return run_command(command, PROJECT, env, LOGS / f"{name}.log")


def measure(repeats: int, tests: bool) -> dict:
    results: dict[str, object] = {}
    status = [timed(["dvc", "status"], "dvc_status")[0] for _ in range(repeats)]
    results["dvc_status_seconds"] = statistics.median(status)
    noop, ran = [], []
    for _ in range(repeats):
        seconds, output = timed(["dvc", "repro"], "noop_repro")
        noop.append(seconds)
        ran += stages_run(output)
    results["noop_repro_seconds"] = statistics.median(noop)
    results["noop_repro_stages_run"] = sorted(set(ran))
    if tests:
        results["test_fast_seconds"] = timed(["make", "test-fast"], "test_fast")[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each dvc command")
    parser.add_argument("--tests", action="store_true", help="also time `make test-fast`")
    args = parser.parse_args()
    setup_logging()
    results = measure(args.repeats, args.tests)
    if results["noop_repro_stages_run"]:
        log.warning("the workspace was not up to date: %s ran", results["noop_repro_stages_run"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        target = f"  (target <= {TARGETS[key]:g} s)" if key in TARGETS else ""
        shown = f"{value:.2f} s" if isinstance(value, float) else value
        print(f"{key}: {shown}{target}")


if __name__ == "__main__":
    main()
