"""`melanoma site ...`: a clinic's own alert threshold and drift check, from the command line.

`calibrate` stores a site's threshold and adopted head with a registry version
(melanoma.sites.calibration, melanoma.registry.sites), `list` shows them, `check` compares a
batch of unlabelled images with the version's validation split (melanoma.sites.drift). Like
melanoma.cli, the handlers import TensorFlow and MLflow themselves, so that `--help` answers at
once.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from melanoma.config import Params
from melanoma.errors import MelanomaError
from melanoma.exit_codes import EXIT_CODES, OK, SOME_FILES_FAILED

if TYPE_CHECKING:
    from melanoma.inference.unfamiliar import UnfamiliarDetector
    from melanoma.sites.head import SiteHead

log = logging.getLogger("melanoma")


def add_site_commands(commands) -> None:
    """The `site` command and its actions, under the `melanoma` command's subparsers."""
    site = commands.add_parser(
        "site",
        help="a clinic's own alert threshold (calibrate, list) and drift check (check)",
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
        "stored. With sites.adapt auto (the default), a site head (PCA of the version's "
        "features plus its melanoma logit, logistic regression) is fitted on the sample and "
        "adopted if its out-of-fold AUC beats the model's on the sample by "
        "sites.adapt_margin; the threshold is then chosen on its out-of-fold scores.",
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


def site_operating_point(
    reference: str, site: str, detector: "UnfamiliarDetector | None"
) -> "tuple[float, SiteHead | None]":
    """(threshold, adopted head or None) of `site` for the version `reference` names, the head
    checked against the features `detector` computes; SiteError, RegistryError or SiteHeadError
    if it cannot be used."""
    from mlflow import MlflowClient

    from melanoma.registry.sites import site_for_reference, usable_site_head

    client = MlflowClient()
    found = site_for_reference(client, reference, site)
    head = usable_site_head(client, found, detector)
    record = found.record
    log.info(
        "melanoma alert threshold %s, of site %s for v%s%s",
        record.threshold,
        site,
        found.version,
        " on its site head's P(melanoma)" if head is not None else "",
    )
    return record.threshold, head


def _site_calibrate(args: argparse.Namespace, params: Params) -> int:
    from mlflow import MlflowClient

    from melanoma.inference.predict import load_model_and_detector
    from melanoma.paths import INGESTED_MANIFEST
    from melanoma.registry.promotion import tagged_threshold
    from melanoma.registry.sites import (
        check_site_name,
        refresh_card_sites,
        resolve_version,
        store_site,
    )
    from melanoma.sites.calibration import calibrate_site
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    client, name = MlflowClient(), params.registry.model_name
    try:
        check_site_name(args.name)
        version = resolve_version(client, name, args.version)
        reference = f"models:/{name}/{version}"
        global_threshold = tagged_threshold(client.get_model_version(name, version))
        model, detector = load_model_and_detector(reference)
        calibration = calibrate_site(
            model, detector, args.name, args.folder, global_threshold, params, INGESTED_MANIFEST
        )
        record = store_site(client, name, version, calibration.record, calibration.head)
    except MelanomaError as error:
        # Said here, not by melanoma.cli, which would not say that the registry is untouched.
        log.error("%s; nothing stored", error)
        return error.exit_code
    refresh_card_sites(client, name, version)
    scale = "the site head's P(melanoma)" if record.head_adopted else "P(melanoma)"
    print(
        f"{name} v{version}: site {record.name}: alert at {scale} >= {record.threshold:.4g} "
        f"({record.images} images, {record.melanomas} melanomas; on the sample: sensitivity "
        f"{record.sample_sensitivity:.3f}, specificity {record.sample_specificity:.3f}; the "
        f"global {record.global_threshold:.4g} gives {record.global_sensitivity:.3f} / "
        f"{record.global_specificity:.3f})"
    )
    adopted = "adopted" if record.head_adopted else "not adopted"
    print(f"  site head {adopted}: {record.head_reason}")
    return OK


def _site_list(args: argparse.Namespace, params: Params) -> int:
    import pandas as pd
    from mlflow import MlflowClient

    from melanoma.registry.sites import all_sites, auc_text, yes_no
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    sites = all_sites(MlflowClient(), name)
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
            "head": yes_no(record.head_adopted),
            "model AUC": auc_text(record.model_auc),
            "head AUC (oof)": auc_text(record.head_auc),
            "calibrated": record.calibrated_at,
        }
        for version, record in sites
    )
    print(
        f"{name}: sensitivity and specificity on each site's sample (where its head is adopted, "
        "on the head's out-of-fold scores); the model's AUC on the sample and the head's out "
        "of fold"
    )
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    return OK


def _site_check(args: argparse.Namespace, params: Params) -> int:
    from dataclasses import asdict

    from mlflow import MlflowClient

    from melanoma.inference.predict import (
        find_images,
        load_model_and_detector,
        model_location,
        predict_files,
        stored_file,
    )
    from melanoma.paths import DRIFT_REFERENCE_FILE
    from melanoma.registry.sites import resolve_version
    from melanoma.sites.batch_drift import DriftBatchError, check_predictions
    from melanoma.sites.drift import DriftReference, DriftReferenceError
    from melanoma.tracking import configure_tracking

    configure_tracking(params.mlflow)
    name = params.registry.model_name
    files = find_images([args.folder])
    if not files:
        raise DriftBatchError(f"no image files in {args.folder}")
    version = resolve_version(MlflowClient(), name, args.version)
    reference = f"models:/{name}/{version}"
    location = model_location(reference)  # downloaded once, read twice
    model, detector = load_model_and_detector(str(location))
    reference_file = stored_file(location, DRIFT_REFERENCE_FILE.name)
    if detector is None or reference_file is None:
        raise DriftReferenceError(
            f"{name} v{version} carries no drift reference (registered before the drift "
            "check): check with a version trained since"
        )
    validation = DriftReference.load(reference_file)
    predictions = predict_files(
        model, files, params.ingest.image_size, params.ingest.max_image_pixels, detector
    )
    unreadable = sum(not p.ok for p in predictions)
    unfamiliar = sum(bool(p.unfamiliar) for p in predictions)
    try:
        result = check_predictions(
            validation, predictions, params.sites.drift_alpha, params.sites.drift_permutations
        )
    except DriftBatchError as error:
        raise DriftBatchError(f"{args.folder}: {error}") from None
    if args.json:
        output = {"folder": str(args.folder), "model": reference, "files": len(files)}
        output |= {"unreadable": unreadable, "unfamiliar": unfamiliar, "drifted": result.drifted}
        print(json.dumps(output | asdict(result), indent=2))
    else:
        verdict = result.verdict(f"the validation split of {name} v{version}")
        left_out = f"{unfamiliar} unfamiliar and {unreadable} unreadable files left out"
        print(f"{args.folder}: {left_out}; {verdict}")
    return SOME_FILES_FAILED if unreadable else OK
