"""One logging set-up for every stage and command, and one way for a stage to fail on bad input."""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@contextmanager
def exit_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn `errors` into a logged message and exit status 1: their messages name the file or
    param and what is wrong with it, so a traceback would only hide them."""
    try:
        yield
    except errors as error:
        log.error("%s", error)
        sys.exit(1)
