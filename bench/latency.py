"""Single-image predict latency through the project's predict code path
(melanoma.inference.predict).

The model is loaded once; then each image is one `predict_files` call, as a user asking about
one file at a time: read, decode, crop/resize, model call. The first call also traces the model,
so it is timed apart. Run as a subprocess by bench.run, so that its peak memory is its own:
`python -m bench.latency --model models/model.keras --params params.yaml --images DIR --out FILE`.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.process import peak_rss_mib
from melanoma.config import load_params
from melanoma.inference.predict import (
    ImagePrediction,
    find_images,
    load_model_and_detector,
    predict_files,
)
from melanoma.labels import LABELS
from melanoma.logs import setup_logging

log = logging.getLogger(__name__)


def timed_predictions(
    model_file: Path, paths: list[Path], ingest_size: int, max_pixels: int
) -> dict:
    """Load time, first-call time, then per-image milliseconds and predictions of `paths`
    (with the unfamiliar-image score, when the model has its detector beside it)."""
    started = time.perf_counter()
    model, detector = load_model_and_detector(str(model_file))
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    predict_files(model, paths[:1], ingest_size, max_pixels, detector)
    first_call_ms = (time.perf_counter() - started) * 1000

    milliseconds: list[float] = []
    predictions: list[ImagePrediction] = []
    for path in tqdm(paths, desc="predict latency", unit="image"):
        started = time.perf_counter()
        predictions.extend(predict_files(model, [path], ingest_size, max_pixels, detector))
        milliseconds.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(milliseconds, [50, 95])
    failed = [p.path for p in predictions if not p.ok]
    predicted = [p for p in predictions if p.ok]
    return {
        "images": len(paths),
        "failed": failed,
        "load_seconds": load_seconds,
        "first_call_ms": first_call_ms,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "mean_ms": float(np.mean(milliseconds)),
        "predictions": {
            "path": [p.path for p in predicted],
            "probabilities": [
                [p.answered_probabilities[label] for label in LABELS] for p in predicted
            ],
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="a .keras model file")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml of the model")
    parser.add_argument("--images", type=Path, required=True, help="folder of images to predict")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    setup_logging()

    params = load_params(args.params)
    paths = find_images([args.images])
    if not paths:
        raise SystemExit(f"{args.images}: no image file to predict")
    result = timed_predictions(
        args.model, paths, params.ingest.image_size, params.ingest.max_image_pixels
    )
    result["peak_rss_mib"] = peak_rss_mib()
    args.out.write_text(json.dumps(result, allow_nan=False))
    log.info(
        "predict latency over %d images: p50 %.1f ms, p95 %.1f ms; wrote %s",
        len(paths),
        result["p50_ms"],
        result["p95_ms"],
        args.out,
    )


if __name__ == "__main__":
    main()
