"""`melanoma app`: check the version and site asked for, then become the page's Streamlit server.

Checked here first so that a typo in --version or --site fails at once, with the known ones
named, instead of in a browser tab. The server then replaces this process (os.execv): stopping
`melanoma app` stops the page.
"""

import logging
import math
import os
import sys
from pathlib import Path

from melanoma.config import Params
from melanoma.exit_codes import CANNOT_RUN

log = logging.getLogger("melanoma")

LOOPBACK = "127.0.0.1"
PAGE_SCRIPT = Path(__file__).with_name("page.py")
DEFAULT_PORT = 8501  # Streamlit's own default


def check_choice(params: Params, version: str | None, site: str | None) -> str:
    """The version number asked for (None: the champion's) if it, and the site, exist;
    RegistryError or SiteError naming the known ones otherwise."""
    from mlflow import MlflowClient

    from melanoma.registry.sites import find_site, resolve_version, version_sites
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    client, name = MlflowClient(), params.registry.model_name
    number = resolve_version(client, name, version)
    if site is not None:
        find_site(name, number, version_sites(client, name, number), site)
    return number


def streamlit_command(
    params: Params, params_file: Path, host: str, port: int, version: str, site: str | None
) -> list[str]:
    """The command line of the page's server: headless, no usage statistics, no file watcher
    (nothing to reload), the upload limit of serve.max_image_bytes (in Streamlit's MB)."""
    command = [sys.executable, "-m", "streamlit", "run", str(PAGE_SCRIPT)]
    command += ["--server.address", host, "--server.port", str(port)]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    command += ["--server.fileWatcherType", "none", "--global.developmentMode", "false"]
    command += ["--client.toolbarMode", "viewer"]  # no "Deploy" button: this page stays local
    command += ["--server.maxUploadSize", str(math.ceil(params.serve.max_image_bytes / 2**20))]
    command += ["--", "--params", str(params_file.resolve()), "--version", version]
    return command + (["--site", site] if site is not None else [])


def run_app(
    params: Params,
    params_file: Path,
    host: str,
    port: int,
    version: str | None,
    site: str | None,
) -> int:
    """Start the page (does not return when it starts); RegistryError or SiteError if the
    choice is wrong."""
    number = check_choice(params, version, site)
    if host != LOOPBACK:
        log.warning(
            "--host %s: the page has no login; anyone who can reach this address can upload "
            "images and see the answers",
            host,
        )
    log.info("the page of %s v%s: http://%s:%d", params.registry.model_name, number, host, port)
    command = streamlit_command(params, params_file, host, port, number, site)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return CANNOT_RUN  # not reached: execv replaces the process
