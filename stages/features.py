"""Stage `features`: with a frozen backbone (train.freeze: all), its features of every
training and validation image, computed once into data/features for `train` to reuse."""

from pathlib import Path

from melanoma.config import load_params
from melanoma.features import FEATURES_DIR, write_feature_cache
from melanoma.logs import setup_logging

AUGMENTED_MANIFEST = Path("data/augmented/manifest.csv")


def main() -> None:
    setup_logging()
    params = load_params()
    write_feature_cache(params.train, AUGMENTED_MANIFEST, FEATURES_DIR)


if __name__ == "__main__":
    main()
