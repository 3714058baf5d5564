"""Stage `features`: with a frozen backbone (train.freeze: all), its features of every
training and validation image, computed once into data/features for `train` to reuse."""

from melanoma.config import load_params
from melanoma.logs import exit_on, setup_logging
from melanoma.model.features import write_feature_cache
from melanoma.paths import AUGMENTED_MANIFEST, FEATURE_STORE_DIR, FEATURES_DIR


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    write_feature_cache(
        params.train, params.preprocess, AUGMENTED_MANIFEST, FEATURES_DIR, FEATURE_STORE_DIR
    )


if __name__ == "__main__":
    main()
