"""The clinic page's latencies, measured where the page's server computes them.

Each figure is a call of `melanoma.app.answers.answer_uploads`, what the page runs for an
upload (decode, scoring with the unfamiliar score, Grad-CAM), on encoded image files held in
memory: one image at a time without and with Grad-CAM (p50 and p95 of `--repeats` calls, after
one untimed call that traces the model), then a batch of 50 images without and with Grad-CAM.
Streamlit's own cost (the upload, drawing the page) is not in them.

    python -m bench.app                  # the registry's champion (after `make pipeline`)
    python -m bench.app --version 3
    python -m bench.app --untrained      # no registry: train.architecture at train.image_size,
                                         # its ImageNet weights, one member, a detector on noise
"""

import argparse
import io
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from melanoma.app.answers import (
    ServedVersion,
    Upload,
    answer_uploads,
    explainer_of,
    load_version,
)
from melanoma.config import PARAMS_FILE, Params, load_params
from melanoma.logs import setup_logging

log = logging.getLogger(__name__)

BATCH = 50
# A dermatoscope's photo is a few hundred kB of JPEG, larger than the model's input: decoding
# and resizing it is part of the cost.
PHOTO_SIZE = (1024, 768)
TARGETS_MS = {"without Grad-CAM": 150, "with Grad-CAM": 600}
BATCH_TARGET_SECONDS = 10


def photos(n: int, seed: int = 0) -> list[Upload]:
    """n JPEG files of smooth random colour fields at PHOTO_SIZE (noise would not compress)."""
    rng = np.random.default_rng(seed)
    uploads = []
    for index in range(n):
        coarse = rng.integers(40, 220, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        uploads.append(Upload(f"photo{index}.jpg", buffer.getvalue()))
    return uploads


def untrained_version(params: Params) -> ServedVersion:
    """A stand-in for a registry version: train.architecture built as train builds it (one
    member, ImageNet weights, untrained head), with a detector at unfamiliar.depth fitted on
    noise and Grad-CAM. Its latencies are those of the architecture; its answers mean nothing."""
    from melanoma.inference.unfamiliar import depth_of, fit_detector, probe
    from melanoma.model.architectures import build_model

    model = build_model(params.train.model_copy(update={"ensemble": 1}), params.preprocess)
    depth = depth_of(model, params.unfamiliar.depth)
    size = params.train.image_size
    noise = np.random.default_rng(1).integers(
        0, 256, (2 * params.unfamiliar.neighbours, size, size, 3)
    )
    _, features = probe(model, depth).predict_on_batch(noise.astype(np.uint8))
    half = len(features) // 2
    detector = fit_detector(
        features[:half], features[half:], depth, params.unfamiliar.neighbours, 0.1
    )
    return ServedVersion(
        model_name=f"untrained {params.train.architecture}",
        version="-",
        run_id=None,
        registered_on="-",
        model=model,
        detector=detector,
        explainer=explainer_of(model),
        global_threshold=0.5,
        sites={},
        drift_reference=None,
        figures={},
    )


def percentiles_ms(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(p50, p95) in milliseconds of `repeats` calls, after one untimed call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(times, [50, 95])
    return float(p50), float(p95)


def seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(served: ServedVersion, params: Params, repeats: int) -> dict[str, float]:
    uploads = photos(BATCH)
    figures = {}
    for label, explain in (("without Grad-CAM", False), ("with Grad-CAM", True)):
        p50, p95 = percentiles_ms(
            partial(answer_uploads, served, uploads[:1], params, explain), repeats
        )
        figures[f"one image {label}: p50 ms"] = p50
        figures[f"one image {label}: p95 ms"] = p95
        figures[f"{BATCH} images {label}: s"] = seconds(
            partial(answer_uploads, served, uploads, params, explain)
        )
    return figures


def report(served: ServedVersion, figures: dict[str, float]) -> str:
    lines = [f"the page's answers, {served.model_name} v{served.version}:"]
    for name, value in figures.items():
        target = next((t for label, t in TARGETS_MS.items() if label in name), None)
        if name.endswith("p50 ms") and target is not None:
            lines.append(f"  {name}: {value:.0f} (target <= {target})")
        elif name.endswith(": s"):
            lines.append(f"  {name}: {value:.2f} (target <= {BATCH_TARGET_SECONDS})")
        else:
            lines.append(f"  {name}: {value:.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.app", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--version", help="registry version (default: the champion)")
    source.add_argument("--untrained", action="store_true", help="no registry: see above")
    parser.add_argument("--repeats", type=int, default=20, help="timed one-image calls")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    served = untrained_version(params) if args.untrained else load_version(params, args.version)
    print(report(served, measure(served, params, args.repeats)))  # the benchmark's output


if __name__ == "__main__":
    main()
