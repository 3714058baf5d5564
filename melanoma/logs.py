"""One logging set-up for every stage and command, and one way for a stage to fail on bad input."""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from melanoma.errors import MelanomaError
from melanoma.exit_codes import STAGE_STOPPED

log = logging.getLogger(__name__)


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@contextmanager
def exit_on() -> Iterator[None]:
    """Turn a MelanomaError into a logged message and exit status STAGE_STOPPED: its message
    names the file or param and what is wrong with it, so a traceback would only hide it."""
    try:
        yield
    except MelanomaError as error:
        log.error("%s", error)
        sys.exit(STAGE_STOPPED)
