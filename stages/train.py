"""Stage `train`: fit the Keras model on data/augmented, every epoch tracked in MLflow."""

import logging
import sys
from pathlib import Path

from melanoma.config import load_params
from melanoma.logs import setup_logging
from melanoma.model.features import FeatureCacheError
from melanoma.model.torch_legacy import WeightsFileError
from melanoma.model.training import TrainOutputs, run_training

AUGMENTED_MANIFEST = Path("data/augmented/manifest.csv")

log = logging.getLogger("stages.train")


def main() -> None:
    setup_logging()
    params = load_params()
    try:
        run_training(params, AUGMENTED_MANIFEST, TrainOutputs())
    except (WeightsFileError, FeatureCacheError) as error:
        # The message names the file and what is wrong with it: no traceback needed.
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
