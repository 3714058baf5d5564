"""Stage `features`: with a frozen backbone (train.freeze: all), its features of every
training and validation image, computed once into data/features for `train` to reuse."""

import logging
import sys
from pathlib import Path

from melanoma.config import load_params
from melanoma.logs import setup_logging
from melanoma.model.features import FEATURES_DIR, write_feature_cache
from melanoma.model.torch_legacy import WeightsFileError

AUGMENTED_MANIFEST = Path("data/augmented/manifest.csv")

log = logging.getLogger("stages.features")


def main() -> None:
    setup_logging()
    params = load_params()
    try:
        write_feature_cache(params.train, AUGMENTED_MANIFEST, FEATURES_DIR)
    except WeightsFileError as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
