"""DVC stage `ingest`: every source of data.sources -> data/ingested/{images/,manifest.csv,
sources.json}."""

import logging

from melanoma.config import load_params
from melanoma.data.ingest import count_lines, ingest
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import INGESTED_DIR as OUTPUT_DIR

log = logging.getLogger("stages.ingest")


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    manifest = ingest(params.data.sources, OUTPUT_DIR, params.ingest)
    for line in count_lines(manifest):
        log.info("%s", line)
    log.info("manifest: %s", OUTPUT_DIR / "manifest.csv")


if __name__ == "__main__":
    main()
