"""Where the simulated sites' scores are and how they read: what bench.sites writes and
bench.sites_tables reads (neither imports the other)."""

from pathlib import Path

import numpy as np

RESULTS = Path("bench/results/sites")
SCORES_FILE = "scores.npz"
ISIC2018 = "isic2018"
NON_LESION = "non_lesion"
VALIDATION = "validation"


def load_scores(step: str) -> dict[str, dict[str, np.ndarray]]:
    """{group: {melanoma, features, unfamiliar, is_melanoma}} of a model step, and the
    unfamiliar threshold under key `unfamiliar_threshold`."""
    with np.load(RESULTS / step / SCORES_FILE) as arrays:
        groups: dict = {}
        for key in arrays.files:
            if "/" in key:
                group, field = key.split("/")
                groups.setdefault(group, {})[field] = arrays[key]
        groups["unfamiliar_threshold"] = float(arrays["unfamiliar_threshold"])
    return groups
