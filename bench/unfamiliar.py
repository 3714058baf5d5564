"""How often the unfamiliar-image warning fires, by where the score looks and its k.

Run from the project root after `dvc repro train` (it reads models/model.keras and
data/augmented; never the test split):

    python -m bench.unfamiliar [--fit-images 2000]

For the trained model it extracts, in one pass per image, the pooled features at every
candidate depth of the network for: the training split (a seeded sample is the fit), the
validation split (the threshold), the non-lesion images of bench/non_lesion.py and the ISIC
2018 external set. For each candidate (depth, k, share of validation flagged) it fits the
detector (melanoma.inference.unfamiliar) and prints the share of each group flagged. "Another
source" fits the score on one source's training images only, sets its threshold on that
source's validation images and scores the other source's validation images (the network itself
saw both: the bench of simulated sites trains on one). Results: bench/results/unfamiliar.json.
"""

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.non_lesion import write_non_lesion_images
from bench.project import project_external_set
from melanoma.logs import setup_logging
from melanoma.paths import AUGMENTED_MANIFEST, MODEL_FILE, PLOTS_DIR

log = logging.getLogger(__name__)

OUT = Path("bench/results/unfamiliar.json")
# The end of each stage of EfficientNet-Lite0 with a residual output, and the pooled features.
CANDIDATE_DEPTHS = ("block10_add", "block14_add", "pooled")
# (depth, k, share of validation flagged)
CANDIDATES = (
    ("pooled", 10, 0.01),
    ("pooled", 10, 0.002),
    ("block10_add", 10, 0.002),
    ("block14_add", 10, 0.01),
    ("block14_add", 1, 0.002),
    ("block14_add", 10, 0.002),
    ("block14_add", 50, 0.002),
)


def features_of(extractor, paths: list[Path], ingest_size: int, max_pixels: int) -> dict:
    """{depth: (n, d) features} of image files, for every CANDIDATE_DEPTHS."""
    from tqdm import tqdm

    from melanoma.inference.predict import model_input_size, read_image, to_model_size

    size = model_input_size(extractor)
    batches = []
    for start in tqdm(range(0, len(paths), 64), desc="features", unit="batch", leave=False):
        images = [read_image(p, ingest_size, max_pixels) for p in paths[start : start + 64]]
        outputs = extractor.predict_on_batch(to_model_size(np.stack(images), size))
        batches.append([np.asarray(o) for o in outputs])
    stacked = [np.concatenate(parts) for parts in zip(*batches, strict=True)]
    return dict(zip(CANDIDATE_DEPTHS, stacked, strict=True))


def main() -> None:
    import keras

    from melanoma.config import load_params
    from melanoma.inference.unfamiliar import fit_detector, probe

    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-images", type=int, default=2000)
    args = parser.parse_args()
    params = load_params()
    size, max_pixels = params.ingest.image_size, params.ingest.max_image_pixels
    model = keras.saving.load_model(MODEL_FILE)
    # One probe per depth (each its own pass through the backbone), as one model.
    probes = [probe(model, depth) for depth in CANDIDATE_DEPTHS]
    extractor = keras.Model(model.inputs, [p.outputs[1] for p in probes])
    manifest = pd.read_csv(AUGMENTED_MANIFEST)
    manifest = manifest[~manifest["augmented"]]
    train = manifest[manifest["split"] == "train"].sample(args.fit_images, random_state=0)
    val = manifest[manifest["split"] == "val"]
    with tempfile.TemporaryDirectory() as scratch:
        non_lesion = write_non_lesion_images(Path(scratch), PLOTS_DIR)
        features = {"non_lesion": features_of(extractor, non_lesion, size, max_pixels)}
    external = sorted(
        p
        for p in project_external_set("isic2018").rglob("*")
        if p.suffix.lower() in (".jpg", ".png")
    )
    features["isic2018"] = features_of(extractor, external, size, max_pixels)
    for name, rows in (("train", train), ("val", val)):
        paths = [Path(p) for p in rows["image_path"]]
        features[name] = features_of(extractor, paths, size, max_pixels)
    train_source = train["source"].to_numpy()
    val_source = val["source"].to_numpy()
    results = []
    for depth, k, flagged in CANDIDATES:
        at = {group: arrays[depth] for group, arrays in features.items()}
        detector = fit_detector(at["train"], at["val"], depth, k, flagged)
        row = {"depth": depth, "k": k, "validation_flagged": flagged}
        for group in ("val", "non_lesion", "isic2018"):
            row[group] = float(np.mean(detector.is_unfamiliar(detector.scores(at[group]))))
        for source in sorted(set(train_source)):
            alone = fit_detector(
                at["train"][train_source != source],
                at["val"][val_source != source],
                depth,
                k,
                flagged,
            )
            scores = alone.scores(at["val"][val_source == source])
            row[f"unseen_{source}"] = float(np.mean(alone.is_unfamiliar(scores)))
        results.append(row)
    table = pd.DataFrame(results)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"fit_images": args.fit_images, "rows": results}, indent=2))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
