"""The `melanoma` command: ask the model about images, build serving requests, move the champion.

Run from the project root (it reads params.yaml there): `melanoma --help`, or
`python -m melanoma.cli --help`. The command handlers import TensorFlow and MLflow themselves,
not this module: those take seconds, and `--help` or a bad argument should answer at once.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from melanoma.app.launch import DEFAULT_PORT
from melanoma.config import PARAMS_FILE, Params, load_params
from melanoma.errors import MelanomaError
from melanoma.exit_codes import EXIT_CODES, OK, SOME_FILES_FAILED
from melanoma.logs import setup_logging
from melanoma.site_commands import add_site_commands, site_operating_point

if TYPE_CHECKING:
    from melanoma.inference.predict import ImagePrediction

log = logging.getLogger("melanoma")


class NoImageFilesError(MelanomaError):
    """None of the paths given is, or holds, an image file."""

    exit_code = SOME_FILES_FAILED


class MissingArgumentError(MelanomaError):
    """An argument the model given needs; the message names it."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging()
    # TensorFlow's C++ start-up notices would bury the answer.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.handler(args, load_params(args.params))
    except MelanomaError as error:
        # The message names the file or param and what is wrong: a traceback would bury it.
        log.error("%s", error)
        return error.exit_code
    except BrokenPipeError:
        # The reader closed stdout early (`| head`): what it wanted was written. Silence the
        # flush at exit, as the Python docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melanoma",
        description="Melanoma detection in dermoscopic images: predictions from the model "
        "registered by the pipeline, serving requests, and champion management.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="params file (default: %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="top label, class probabilities and melanoma alert for image files",
        description="Predict every image file given, or found in the folders given. "
        "Unusable files get an error line; the others are still predicted.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder")
    _model_argument(predict)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="also write, per image, DIR/<name>_gradcam.png: the image, its Grad-CAM heat maps "
        "(last convolutional block) for melanoma and for the top class, and the probabilities "
        "(created if missing; checked writable before anything else)",
    )
    alert = predict.add_mutually_exclusive_group()
    alert.add_argument(
        "--threshold",
        type=_probability,
        help="raise the melanoma alert when P(melanoma) >= this (default: the threshold "
        "evaluate chose for the registered version, its tag melanoma_threshold; required for "
        "a model file or a runs:/ URI, which carry none)",
    )
    alert.add_argument(
        "--site",
        metavar="NAME",
        help="raise the alert at the threshold calibrated for this site and the registered "
        "version (`melanoma site calibrate`)",
    )
    predict.set_defaults(handler=_predict)

    request = commands.add_parser(
        "request",
        help="JSON body for the served model (`mlflow models serve`) from image files",
        description='Write {"inputs": [...]} to stdout: the base64 of each image file, as it '
        "is (the served model decodes, crops and resizes it as ingest does). Each file is "
        "decoded here first, so an unusable one is named now rather than refused by the server.",
    )
    request.add_argument("paths", nargs="+", metavar="IMAGE", help="image file or folder")
    request.set_defaults(handler=_request)

    promote = commands.add_parser("promote", help="make a registered version the champion, by hand")
    promote.add_argument("version", help="version number of registry.model_name")
    promote.set_defaults(handler=_promote)

    add_site_commands(commands)

    rollback = commands.add_parser(
        "rollback", help="give the champion alias back to the previous one"
    )
    rollback.set_defaults(handler=_rollback)

    app = commands.add_parser(
        "app",
        help="a web page for a clinic: upload images, see the alert, Grad-CAM, the batch",
        description="Serve the page of the champion (or --version) on http://127.0.0.1:PORT "
        "(docs/app.md). Runs until stopped (Ctrl-C).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    app.add_argument("--version", help="version of registry.model_name (default: the champion)")
    app.add_argument("--site", metavar="NAME", help="the site chosen when the page opens")
    app.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; another one: the page has no login)",
    )
    app.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    app.set_defaults(handler=_app)
    return parser


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="URI_OR_PATH",
        help="models:/name@alias, models:/name/version, runs:/id/model, a .keras file or an "
        "MLflow model folder (default: models:/<registry.model_name>@champion)",
    )


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a probability strictly between 0 and 1")
    return value


def _image_files(paths: list[str]) -> list[Path]:
    """The image files `paths` name or hold (melanoma.inference.predict.find_images);
    NoImageFilesError if there is none."""
    from melanoma.inference.predict import find_images

    files = find_images(paths)
    if not files:
        raise NoImageFilesError(f"no image files in {', '.join(map(str, paths))}")
    return files


def _load_model(reference: str | None, params: Params):
    """(reference, Keras model, its unfamiliar-image detector or None). A trained model (a
    .keras file, a training run's model) gets `predict.views` test-time views; a registered
    version keeps the views it was registered with
    (melanoma.inference.predict.scored_with_views). ModelLoadError if the model cannot be
    loaded or does not take RGB squares."""
    from melanoma.inference.predict import is_mlflow_uri, load_model_and_detector, model_input_size
    from melanoma.tracking import configure_tracking

    reference = reference or f"models:/{params.registry.model_name}@champion"
    if is_mlflow_uri(reference) or Path(reference).is_dir():
        configure_tracking(params.mlflow)
    log.info("loading model %s", reference)
    model, detector = load_model_and_detector(reference, params.predict.views)
    model_input_size(model)  # a model that does not take RGB squares fails here, once
    if detector is None:
        log.warning(
            "%s carries no unfamiliar-image detector: answers say unfamiliar null", reference
        )
    return reference, model, detector


def _predict(args: argparse.Namespace, params: Params) -> int:
    from melanoma.inference.predict import predict_files
    from melanoma.registry.promotion import registered_threshold

    # The output folder first: a typo in it should not cost a model load and the predictions.
    if args.explain is not None:
        from melanoma.evaluation.explain import check_output_dir

        check_output_dir(args.explain)
    files = _image_files(args.paths)
    reference, model, detector = _load_model(args.model, params)
    threshold, site_head = args.threshold, None
    if args.site is not None:
        threshold, site_head = site_operating_point(reference, args.site, detector)
    elif threshold is None:
        # The version's own threshold: params.yaml may have changed since it was registered.
        threshold = registered_threshold(reference)
        if threshold is None:
            raise MissingArgumentError(
                f"{reference} carries no alert threshold (only registered versions do): "
                "give --threshold"
            )
        log.info("melanoma alert threshold %s, from the registered version's tag", threshold)
    explainer = None
    if args.explain is not None:
        from melanoma.evaluation.explain import grad_cam
        from melanoma.inference.views import trained_model

        explainer = grad_cam(trained_model(model))  # of the image itself, whatever the views
    predictions = predict_files(
        model, files, params.ingest.image_size, params.ingest.max_image_pixels, detector
    )
    if site_head is not None:
        from melanoma.sites.head import with_site_head

        predictions = with_site_head(predictions, site_head)
    overlays: list[str | None] = [None] * len(predictions)
    if explainer is not None:
        from melanoma.evaluation.explain import write_overlays

        size, max_pixels = params.ingest.image_size, params.ingest.max_image_pixels
        overlays = write_overlays(explainer, predictions, size, max_pixels, threshold, args.explain)
    if args.json:
        output = _json_output(reference, threshold, predictions, args.site, site_head is not None)
        if explainer is not None:
            pairs = zip(output["predictions"], predictions, overlays, strict=True)
            for item, prediction, overlay in pairs:
                if prediction.ok:
                    item["overlay"] = overlay
        print(json.dumps(output, indent=2))
    else:
        for prediction, overlay in zip(predictions, overlays, strict=True):
            print(_text_output(prediction, threshold, overlay))
    failed = sum(not p.ok for p in predictions)
    if failed:
        log.error("%d of %d files could not be predicted", failed, len(predictions))
    no_overlay = sum(p.ok and o is None for p, o in zip(predictions, overlays, strict=True))
    if explainer is not None and no_overlay:
        log.error("%d of %d overlays could not be written", no_overlay, len(predictions))
    return SOME_FILES_FAILED if failed or (explainer is not None and no_overlay) else OK


def _text_output(
    prediction: "ImagePrediction", threshold: float, overlay: str | None = None
) -> str:
    if not prediction.ok:
        return f"{prediction.path}: ERROR {prediction.reason}: {prediction.error}"
    ranked = sorted(prediction.answered_probabilities.items(), key=lambda item: -item[1])
    line = f"{prediction.path}: {prediction.top_label} {ranked[0][1]:.3f}"
    if prediction.melanoma_alert(threshold):
        probability = prediction.melanoma_probability
        line += f"  MELANOMA ALERT: P(melanoma) {probability:.3f} >= {threshold:.4g}"
    if prediction.unfamiliar:
        line += (
            f"  UNFAMILIAR: unlike the training images (score {prediction.unfamiliar_score:.3g}),"
            " the answer may be meaningless"
        )
    line += "\n  " + ", ".join(f"{label} {p:.3f}" for label, p in ranked)
    return line + (f"\n  overlay: {overlay}" if overlay else "")


def _json_output(
    reference: str,
    threshold: float,
    predictions: list["ImagePrediction"],
    site: str | None,
    site_head: bool = False,
) -> dict:
    """The predictions as JSON; with a site head (`site_head`), melanoma_probability is the
    head's, the probabilities the model's."""
    items = []
    for prediction in predictions:
        if prediction.ok:
            items.append(
                {
                    "path": prediction.path,
                    "top_label": prediction.top_label,
                    "probabilities": prediction.probabilities,
                    "melanoma_probability": prediction.melanoma_probability,
                    "melanoma_alert": prediction.melanoma_alert(threshold),
                    "unfamiliar": prediction.unfamiliar,
                    "unfamiliar_score": prediction.unfamiliar_score,
                }
            )
        else:
            items.append(
                {"path": prediction.path, "error": prediction.error, "reason": prediction.reason}
            )
    head: dict[str, object] = {"model": reference}
    if site is not None:
        head |= {"site": site, "site_head": site_head}
    return head | {"melanoma_threshold": threshold, "predictions": items}


def _request(args: argparse.Namespace, params: Params) -> int:
    from melanoma.registry.serving import request_body

    body = request_body(_image_files(args.paths), params.ingest.max_image_pixels)
    json.dump(body, sys.stdout, separators=(",", ":"))
    return OK


def _promote(args: argparse.Namespace, params: Params) -> int:
    from mlflow import MlflowClient

    from melanoma.registry.promotion import promote_by_hand
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    previous = promote_by_hand(MlflowClient(), name, args.version)
    print(f"{name}: champion {f'v{previous}' if previous else 'none'} -> v{args.version}")
    return OK


def _rollback(args: argparse.Namespace, params: Params) -> int:
    from mlflow import MlflowClient

    from melanoma.registry.promotion import rollback
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    current, previous = rollback(MlflowClient(), name)
    print(f"{name}: champion v{current} -> v{previous}")
    return OK


def _app(args: argparse.Namespace, params: Params) -> int:
    from melanoma.app.launch import run_app

    return run_app(params, args.params, args.host, args.port, args.version, args.site)


if __name__ == "__main__":
    sys.exit(main())
