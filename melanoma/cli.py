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

from melanoma.config import PARAMS_FILE, Params, ParamsError, load_params
from melanoma.logs import setup_logging

if TYPE_CHECKING:
    from melanoma.model.predict import ImagePrediction

log = logging.getLogger("melanoma")

OK, SOME_FILES_FAILED, CANNOT_RUN = 0, 1, 2

EXIT_CODES = f"""exit codes:
  {OK}  every image was predicted / the action was done
  {SOME_FILES_FAILED}  at least one file could not be used (the others were still predicted)
  {CANNOT_RUN}  nothing was done: bad arguments or params, model or registry unavailable
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        params = load_params(args.params)
    except (OSError, ParamsError) as error:
        log.error("%s", error)
        return CANNOT_RUN
    # TensorFlow's C++ start-up notices would bury the answer.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.handler(args, params)
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

    site = commands.add_parser(
        "site",
        help="a clinic's own alert threshold: calibrate it on a labelled sample, list them",
        description="A site (a clinic) labels a sample of its own images; its alert threshold "
        "is chosen on it and stored with the registry version (tag site.<NAME>).",
    )
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    calibrate = site_commands.add_parser(
        "calibrate",
        help="choose and store a site's threshold from a labelled folder <class>/<image>",
        description="Score the labelled sample DIR (<class>/<image>, as the external sets) "
        "with the version and store the site's threshold with it; calibrating again replaces "
        "it. A sample that cannot support the promise (sites.target_sensitivity with "
        "sites.confidence) is refused, naming the melanomas it would need, and nothing is "
        "stored.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_argument("name", metavar="NAME", help="the site: a plain identifier")
    calibrate.add_argument("folder", type=Path, metavar="DIR", help="the labelled sample")
    calibrate.add_argument(
        "--version", help="version of registry.model_name (default: the champion)"
    )
    calibrate.set_defaults(handler=_site_calibrate)
    listing = site_commands.add_parser("list", help="every version's sites and their figures")
    listing.set_defaults(handler=_site_list)
    check = site_commands.add_parser(
        "check",
        help="does a batch of unlabelled images look like the version's validation split?",
        description="Compare the images of DIR (no labels) with the version's validation "
        "split: P(melanoma) by a Kolmogorov-Smirnov test, the embedding by MMD with a "
        "permutation p-value. One line says whether the batch looks like the training data or "
        "its site should be calibrated; unfamiliar images are counted and left out.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("folder", type=Path, metavar="DIR", help="the batch: image files")
    check.add_argument("--version", help="version of registry.model_name (default: the champion)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=_site_check)

    rollback = commands.add_parser(
        "rollback", help="give the champion alias back to the previous one"
    )
    rollback.set_defaults(handler=_rollback)
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


def _load_model(reference: str | None, params: Params):
    """(reference, Keras model, its unfamiliar-image detector or None)."""
    from melanoma.model.predict import is_mlflow_uri, load_model_and_detector
    from melanoma.tracking import configure_tracking

    reference = reference or f"models:/{params.registry.model_name}@champion"
    if is_mlflow_uri(reference) or Path(reference).is_dir():
        configure_tracking(params.mlflow)
    log.info("loading model %s", reference)
    model, detector = load_model_and_detector(reference)
    if detector is None:
        log.warning(
            "%s carries no unfamiliar-image detector: answers say unfamiliar null", reference
        )
    return reference, model, detector


def _images_and_model(args: argparse.Namespace, params: Params) -> tuple | int:
    """(image files, model reference, model, detector) for `args.paths` and `args.model`, or
    the exit code if there is no image or no model."""
    from melanoma.model.predict import ModelLoadError, find_images, model_input_size

    files = find_images(args.paths)
    if not files:
        log.error("no image files in %s", ", ".join(args.paths))
        return SOME_FILES_FAILED
    try:
        reference, model, detector = _load_model(args.model, params)
        model_input_size(model)  # a model that does not take RGB squares fails here, once
    except ModelLoadError as error:
        log.error("%s", error)
        return CANNOT_RUN
    return files, reference, model, detector


def _predict(args: argparse.Namespace, params: Params) -> int:
    from melanoma.model.predict import predict_files
    from melanoma.registry.promotion import RegistryError, registered_threshold

    # The output folder first: a typo in it should not cost a model load and the predictions.
    if args.explain is not None and not _explain_folder_ok(args.explain):
        return CANNOT_RUN
    loaded = _images_and_model(args, params)
    if isinstance(loaded, int):
        return loaded
    files, reference, model, detector = loaded
    threshold = args.threshold
    if args.site is not None:
        threshold = _site_threshold(reference, args.site)
        if threshold is None:
            return CANNOT_RUN
    elif threshold is None:
        # The version's own threshold: params.yaml may have changed since it was registered.
        try:
            threshold = registered_threshold(reference)
        except RegistryError as error:
            log.error("%s", error)
            return CANNOT_RUN
        if threshold is None:
            log.error(
                "%s carries no alert threshold (only registered versions do): give --threshold",
                reference,
            )
            return CANNOT_RUN
        log.info("melanoma alert threshold %s, from the registered version's tag", threshold)
    explainer = _explainer(model) if args.explain is not None else None
    if isinstance(explainer, int):
        return explainer
    predictions = predict_files(
        model, files, params.ingest.image_size, params.ingest.max_image_pixels, detector
    )
    overlays: list[str | None] = [None] * len(predictions)
    if explainer is not None:
        from melanoma.evaluation.explain import write_overlays

        size, max_pixels = params.ingest.image_size, params.ingest.max_image_pixels
        overlays = write_overlays(explainer, predictions, size, max_pixels, threshold, args.explain)
    if args.json:
        output = _json_output(reference, threshold, predictions, args.site)
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


def _explain_folder_ok(folder: Path) -> bool:
    from melanoma.evaluation.explain import ExplainError, check_output_dir

    try:
        check_output_dir(folder)
    except ExplainError as error:
        log.error("%s", error)
        return False
    return True


def _explainer(model):
    """Grad-CAM for the model, or CANNOT_RUN if it has no convolutional block to explain."""
    from melanoma.evaluation.explain import ExplainError, grad_cam

    try:
        return grad_cam(model)
    except ExplainError as error:
        log.error("%s", error)
        return CANNOT_RUN


def _text_output(
    prediction: "ImagePrediction", threshold: float, overlay: str | None = None
) -> str:
    if not prediction.ok:
        return f"{prediction.path}: ERROR {prediction.reason}: {prediction.error}"
    ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
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
    reference: str, threshold: float, predictions: list["ImagePrediction"], site: str | None
) -> dict:
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
    head = {"model": reference} | ({"site": site} if site is not None else {})
    return head | {"melanoma_threshold": threshold, "predictions": items}


def _site_threshold(reference: str, site: str) -> float | None:
    """The threshold of `site` for the version `reference` names; None (logged) if none."""
    from mlflow import MlflowClient

    from melanoma.registry.promotion import RegistryError
    from melanoma.sites.registry import SiteError, site_for_reference

    try:
        version, record = site_for_reference(MlflowClient(), reference, site)
    except (SiteError, RegistryError) as error:
        log.error("%s", error)
        return None
    log.info("melanoma alert threshold %s, of site %s for v%s", record.threshold, site, version)
    return record.threshold


def _site_calibrate(args: argparse.Namespace, params: Params) -> int:
    from mlflow import MlflowClient

    from melanoma.model.predict import ModelLoadError, load_model
    from melanoma.registry.promotion import RegistryError, registered_threshold
    from melanoma.sites.calibration import calibrate_site
    from melanoma.sites.operating_point import SiteSampleError
    from melanoma.sites.registry import (
        SiteError,
        check_site_name,
        refresh_card_sites,
        resolve_version,
        store_site,
    )
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    client, name = MlflowClient(), params.registry.model_name
    try:
        check_site_name(args.name)
        version = resolve_version(client, name, args.version)
        reference = f"models:/{name}/{version}"
        global_threshold = registered_threshold(reference)
        model = load_model(reference)
        record = calibrate_site(model, args.name, args.folder, global_threshold, params)
    except (SiteError, RegistryError, ModelLoadError, SiteSampleError) as error:
        log.error("%s; nothing stored", error)
        return CANNOT_RUN
    store_site(client, name, version, record)
    refresh_card_sites(client, name, version)
    print(
        f"{name} v{version}: site {record.name}: alert at P(melanoma) >= {record.threshold:.4g} "
        f"({record.images} images, {record.melanomas} melanomas; on the sample: sensitivity "
        f"{record.sample_sensitivity:.3f}, specificity {record.sample_specificity:.3f}; the "
        f"global {record.global_threshold:.4g} gives {record.global_sensitivity:.3f} / "
        f"{record.global_specificity:.3f})"
    )
    return OK


def _site_list(args: argparse.Namespace, params: Params) -> int:
    import pandas as pd
    from mlflow import MlflowClient

    from melanoma.registry.promotion import RegistryError
    from melanoma.sites.registry import all_sites
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    try:
        sites = all_sites(MlflowClient(), name)
    except RegistryError as error:
        log.error("%s", error)
        return CANNOT_RUN
    if not sites:
        print(f"{name}: no site calibrated (`melanoma site calibrate NAME DIR`)")
        return OK
    table = pd.DataFrame(
        {
            "version": version,
            "site": record.name,
            "threshold": record.threshold,
            "images": record.images,
            "melanomas": record.melanomas,
            "sensitivity": record.sample_sensitivity,
            "specificity": record.sample_specificity,
            "global sens.": record.global_sensitivity,
            "global spec.": record.global_specificity,
            "calibrated": record.calibrated_at,
        }
        for version, record in sites
    )
    print(f"{name}: sensitivity and specificity on each site's sample")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    return OK


def _site_check(args: argparse.Namespace, params: Params) -> int:
    from dataclasses import asdict

    import numpy as np
    from mlflow import MlflowClient

    from melanoma.model.predict import (
        ModelLoadError,
        find_images,
        load_model_and_detector,
        load_stored_file,
        predict_files,
    )
    from melanoma.paths import DRIFT_REFERENCE_FILE
    from melanoma.registry.promotion import RegistryError
    from melanoma.sites.drift import DriftReference, DriftReferenceError, check_drift
    from melanoma.sites.registry import resolve_version
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    files = find_images([args.folder])
    if not files:
        log.error("no image files in %s", args.folder)
        return CANNOT_RUN
    try:
        version = resolve_version(MlflowClient(), name, args.version)
        reference = f"models:/{name}/{version}"
        model, detector = load_model_and_detector(reference)
        reference_file = load_stored_file(reference, DRIFT_REFERENCE_FILE.name)
        if detector is None or reference_file is None:
            raise DriftReferenceError(
                f"{name} v{version} carries no drift reference (registered before the drift "
                "check): check with a version trained since"
            )
        validation = DriftReference.load(reference_file)
    except (RegistryError, ModelLoadError, DriftReferenceError) as error:
        log.error("%s", error)
        return CANNOT_RUN
    predictions = predict_files(
        model, files, params.ingest.image_size, params.ingest.max_image_pixels, detector
    )
    compared = [p for p in predictions if p.ok and not p.unfamiliar]
    unreadable = sum(not p.ok for p in predictions)
    unfamiliar = sum(bool(p.unfamiliar) for p in predictions)
    if len(compared) < 2:
        log.error("%s: %d images left to compare (the check needs 2)", args.folder, len(compared))
        return CANNOT_RUN
    result = check_drift(
        validation,
        np.array([p.melanoma_probability for p in compared]),
        np.stack([p.features for p in compared]),
        params.sites.drift_alpha,
        params.sites.drift_permutations,
    )
    if args.json:
        output = {"folder": str(args.folder), "model": reference, "files": len(files)}
        output |= {"unreadable": unreadable, "unfamiliar": unfamiliar, "drifted": result.drifted}
        print(json.dumps(output | asdict(result), indent=2))
    else:
        verdict = result.verdict(f"the validation split of {name} v{version}")
        left_out = f"{unfamiliar} unfamiliar and {unreadable} unreadable files left out"
        print(f"{args.folder}: {left_out}; {verdict}")
    return SOME_FILES_FAILED if unreadable else OK


def _request(args: argparse.Namespace, params: Params) -> int:
    from melanoma.data.images import ImageRejected
    from melanoma.model.predict import find_images
    from melanoma.model.serving import request_body

    files = find_images(args.paths)
    if not files:
        log.error("no image files in %s", ", ".join(args.paths))
        return SOME_FILES_FAILED
    try:
        body = request_body(files, params.ingest.max_image_pixels)
    except ImageRejected as rejected:
        log.error("%s (%s)", rejected, rejected.reason)
        return SOME_FILES_FAILED
    json.dump(body, sys.stdout, separators=(",", ":"))
    return OK


def _promote(args: argparse.Namespace, params: Params) -> int:
    from mlflow import MlflowClient

    from melanoma.registry.promotion import RegistryError, promote_by_hand
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    try:
        previous = promote_by_hand(MlflowClient(), name, args.version)
    except RegistryError as error:
        log.error("%s", error)
        return CANNOT_RUN
    print(f"{name}: champion {f'v{previous}' if previous else 'none'} -> v{args.version}")
    return OK


def _rollback(args: argparse.Namespace, params: Params) -> int:
    from mlflow import MlflowClient

    from melanoma.registry.promotion import RegistryError, rollback
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    try:
        current, previous = rollback(MlflowClient(), name)
    except RegistryError as error:
        log.error("%s", error)
        return CANNOT_RUN
    print(f"{name}: champion v{current} -> v{previous}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
