"""Stage `train`: fit the Keras model on data/augmented, every epoch tracked in MLflow."""

from melanoma.config import load_params
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import AUGMENTED_MANIFEST, FEATURES_DIR, SOURCES_SUMMARY, TRAIN_OUTPUTS
from melanoma.tracking import runs_end_as_killed
from melanoma.training.run import TrainOutputs, run_training


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    with runs_end_as_killed():
        outputs = TrainOutputs(**TRAIN_OUTPUTS)
        run_training(params, AUGMENTED_MANIFEST, outputs, FEATURES_DIR, SOURCES_SUMMARY)


if __name__ == "__main__":
    main()
