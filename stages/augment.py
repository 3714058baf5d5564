"""Stage `augment`: train/validation split, then class-balanced augmented copies and low-detail
copies (augment.match_detail_px) for train only."""

import logging
import shutil

from melanoma.config import load_params
from melanoma.data.augmentation import (
    augmented_manifest,
    log_counts,
    plan_augmentation,
    write_copies,
    write_detail_copies,
)
from melanoma.data.manifest import (
    AUGMENTED_COLUMNS,
    VALIDATED_COLUMNS,
    read_manifest,
    write_manifest,
)
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import AUGMENTED_DIR, AUGMENTED_MANIFEST, VALIDATED_MANIFEST

log = logging.getLogger(__name__)


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    validated = read_manifest(VALIDATED_MANIFEST, VALIDATED_COLUMNS)
    plan = plan_augmentation(
        validated, params.augment, VALIDATED_MANIFEST, AUGMENTED_DIR / "images"
    )
    # Stale copies from an earlier run with other params would otherwise linger in the output.
    shutil.rmtree(AUGMENTED_DIR, ignore_errors=True)
    write_copies(plan.copies, params.augment)
    if params.augment.match_detail_px is not None:
        write_detail_copies(plan.detail_copies, params.augment.match_detail_px)
    manifest = augmented_manifest(plan)
    write_manifest(manifest, AUGMENTED_MANIFEST, AUGMENTED_COLUMNS)
    log_counts(manifest)
    log.info(
        "wrote %d augmented images, %d low-detail copies and %s",
        len(plan.copies),
        len(plan.detail_copies),
        AUGMENTED_MANIFEST,
    )


if __name__ == "__main__":
    main()
