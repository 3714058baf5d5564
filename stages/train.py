"""Stage `train`: fit the Keras model on data/augmented, every epoch tracked in MLflow."""

from pathlib import Path

from melanoma.config import load_params
from melanoma.logs import setup_logging
from melanoma.training import TrainOutputs, run_training

AUGMENTED_MANIFEST = Path("data/augmented/manifest.csv")


def main() -> None:
    setup_logging()
    params = load_params()
    run_training(params, AUGMENTED_MANIFEST, TrainOutputs())


if __name__ == "__main__":
    main()
