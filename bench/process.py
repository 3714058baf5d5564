"""Running the benchmark's commands: timed, their output kept in a log file, and peak memory."""

import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

FAILURE_TAIL_LINES = 40


def run_command(
    command: list[str], cwd: Path, env: Mapping[str, str], log_file: Path
) -> tuple[float, str]:
    """Run `command`, its stdout and stderr going to `log_file`; return (wall seconds, output).

    Raises RuntimeError with the end of the output if the command fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("running `%s` in %s (output: %s)", " ".join(command), cwd, log_file)
    with open(log_file, "w") as output:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
    text = log_file.read_text(errors="replace")
    if done.returncode != 0:
        tail = "\n".join(text.splitlines()[-FAILURE_TAIL_LINES:])
        raise RuntimeError(
            f"`{' '.join(command)}` failed with exit code {done.returncode} "
            f"(whole output in {log_file}):\n{tail}"
        )
    log.info("`%s` took %.1f s", " ".join(command), seconds)
    return seconds, text


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB: of this process (RUSAGE_SELF), or of the largest single
    descendant process that has ended and been waited for (RUSAGE_CHILDREN, not a sum)."""
    return resource.getrusage(who).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group that `process` leads (started with start_new_session),
    then SIGKILL to whatever is left of it (children outlive their leader)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
