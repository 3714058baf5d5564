"""The nine diagnosis labels of the ISIC collection, in the fixed order the model outputs them."""

import re

LABELS: tuple[str, ...] = (
    "actinic_keratosis",
    "basal_cell_carcinoma",
    "dermatofibroma",
    "melanoma",
    "nevus",
    "pigmented_benign_keratosis",
    "seborrheic_keratosis",
    "squamous_cell_carcinoma",
    "vascular_lesion",
)
MELANOMA = "melanoma"
MELANOMA_INDEX = LABELS.index(MELANOMA)


def canonical_label(folder_name: str) -> str | None:
    """Map a class folder name to its canonical label, or None if it is not one of the nine.

    Case, spaces, underscores and hyphens don't matter:
    "Basal Cell-Carcinoma" -> "basal_cell_carcinoma".
    """
    key = re.sub(r"[\s_\-]+", "_", folder_name.strip().lower())
    return key if key in LABELS else None
