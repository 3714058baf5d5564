"""A reference speed of the machine a benchmark ran on, printed beside its timings: timings
from two machines (or one machine, busy and idle) compare as ratios to it."""

import time

import numpy as np

REFERENCE_SIZE = 180
REFERENCE_BATCH = 32
REFERENCE_REPEATS = 5


def lite0_images_per_second() -> float:
    """EfficientNet-Lite0 (random weights: the speed does not depend on them) forward passes
    at 180 px, batches of 32, the median of REFERENCE_REPEATS after one warm-up batch."""
    from melanoma.model.efficientnet_lite import backbone

    model = backbone("efficientnet_lite0", REFERENCE_SIZE)
    images = np.random.default_rng(0).uniform(
        0, 255, (REFERENCE_BATCH, REFERENCE_SIZE, REFERENCE_SIZE, 3)
    )
    model.predict_on_batch(images)
    seconds = []
    for _ in range(REFERENCE_REPEATS):
        started = time.perf_counter()
        model.predict_on_batch(images)
        seconds.append(time.perf_counter() - started)
    return REFERENCE_BATCH / float(np.median(seconds))
