import json
from pathlib import Path

import pandas as pd
import pytest

from melanoma.data.duplicates import resolve_content
from melanoma.data.validation import (
    SUITE_FILE,
    class_counts,
    critical_failures,
    load_suites,
    run_expectations,
)
from melanoma.labels import LABELS
from melanoma.params.data import ValidateParams
from melanoma.reports import ExpectationOutcome

# The names (GX `description`) of the expectations in melanoma/data/expectations/manifest_suite.json
LABELS_KNOWN = "labels within the nine"
ALL_CLASSES = "every class has accepted images in train and in test (a missing class)"
MIN_TRAIN = "at least validate.min_images_per_class.train images used per class in train"
MIN_WIDTH = "source images at least validate.min_width wide"
UNIQUE_PIXELS = "no two accepted images with the same pixels (the duplicate policies resolve them)"


def policy(**changes) -> ValidateParams:
    values = dict(
        min_width=64,
        min_height=64,
        min_images_per_class={"train": 2, "test": 1},
        on_label_conflict="drop",
        on_leak="drop_from_train",
        on_duplicate="keep_first",
    )
    return ValidateParams(**{**values, **changes})


def validate(manifest: pd.DataFrame, tmp_path: Path, **changes) -> dict[str, ExpectationOutcome]:
    chosen = policy(**changes)
    checks = resolve_content(manifest, chosen)
    results = run_expectations(checks.manifest, chosen, tmp_path / "data_docs")
    return {r.name: r for r in results}


def failed(results: dict[str, ExpectationOutcome]) -> set[str]:
    return {name for name, r in results.items() if not r.success}


def test_clean_manifest_passes_every_expectation_and_gets_data_docs(ingest_manifest, tmp_path):
    results = validate(ingest_manifest(), tmp_path)

    assert failed(results) == set()
    assert len(results) == sum(len(s["expectations"]) for s in load_suites().values())
    docs = tmp_path / "data_docs"
    assert (docs / "index.html").is_file()
    pages = sorted(p.parent.parent.parent.name for p in (docs / "validations").rglob("*.html"))
    assert pages == ["class_counts", "manifest"]


def test_unknown_label_is_a_critical_failure_naming_the_file(ingest_manifest, tmp_path):
    manifest = ingest_manifest(
        extra=(dict(split="train", label="freckle", source_path="Train/freckle/F.jpg"),)
    )
    results = validate(manifest, tmp_path)

    assert failed(results) == {LABELS_KNOWN}
    unknown = results[LABELS_KNOWN]
    assert unknown.critical
    assert unknown.observed_value["failing"] == 1
    assert unknown.observed_value["failing_rows"] == [
        {"label": "freckle", "source": "isic", "source_path": "Train/freckle/F.jpg"}
    ]
    assert critical_failures(list(results.values()))[0].startswith(f"manifest: {LABELS_KNOWN}")


def test_missing_class_fails_naming_the_class_and_split(ingest_manifest, tmp_path):
    manifest = ingest_manifest()
    manifest = manifest[~((manifest["label"] == "vascular_lesion") & (manifest["split"] == "test"))]
    results = validate(manifest, tmp_path)

    assert ALL_CLASSES in failed(results)
    assert results[ALL_CLASSES].critical
    assert results[ALL_CLASSES].observed_value["failing_rows"] == [
        {"accepted": 0, "label": "vascular_lesion", "split": "test"}
    ]


def test_too_few_images_of_a_class_is_a_warning_with_the_count(ingest_manifest, tmp_path):
    manifest = ingest_manifest(extra=(dict(split="train", label="nevus"),))
    results = validate(manifest, tmp_path, min_images_per_class={"train": 3, "test": 1})

    assert failed(results) == {MIN_TRAIN}
    assert not results[MIN_TRAIN].critical
    short = results[MIN_TRAIN].observed_value
    assert short["checked"] == len(LABELS)
    assert {row["label"] for row in short["failing_rows"]} == set(LABELS) - {"nevus"}


def test_dropped_images_do_not_count_towards_a_class(ingest_manifest, tmp_path):
    # Both train images of seborrheic keratosis are also filed as melanoma: dropped as conflicts.
    # The class is still present (accepted), so this warns instead of stopping the stage.
    manifest = ingest_manifest()
    keratosis_train = manifest[
        (manifest["label"] == "seborrheic_keratosis") & (manifest["split"] == "train")
    ]
    extra = tuple(
        dict(split="train", label="melanoma", pixel_sha256=h)
        for h in keratosis_train["pixel_sha256"]
    )
    results = validate(ingest_manifest(extra=extra), tmp_path)

    assert results[ALL_CLASSES].success
    assert {"used": 0, "label": "seborrheic_keratosis", "split": "train"} in results[
        MIN_TRAIN
    ].observed_value["failing_rows"]
    assert not critical_failures(list(results.values()))


def test_too_small_source_image_fails_and_names_it(ingest_manifest, tmp_path):
    manifest = ingest_manifest(
        extra=(
            dict(
                split="train", label="nevus", source_path="Train/nevus/tiny.jpg", source_width="20"
            ),
        )
    )
    results = validate(manifest, tmp_path)

    assert failed(results) == {MIN_WIDTH}
    assert results[MIN_WIDTH].critical
    assert results[MIN_WIDTH].observed_value["failing_rows"] == [
        {"source": "isic", "source_path": "Train/nevus/tiny.jpg", "source_width": 20.0}
    ]


def test_min_width_comes_from_params(ingest_manifest, tmp_path):
    results = validate(ingest_manifest(), tmp_path, min_width=181)

    assert failed(results) == {MIN_WIDTH}


@pytest.mark.parametrize(
    ("fields", "failing"),
    [
        (dict(image_path=""), "every accepted image was decoded and written"),
        (dict(channels="4"), "three channels (RGB)"),
        (dict(split="validation"), "splits within train/test"),
        (dict(width=""), "every accepted image has a width"),
    ],
)
def test_an_accepted_image_not_decoded_as_rgb_fails(ingest_manifest, tmp_path, fields, failing):
    manifest = ingest_manifest(extra=({"split": "train", "label": "nevus", **fields},))
    results = validate(manifest, tmp_path)

    assert failed(results) == {failing}
    assert results[failing].critical


def test_rejected_rows_are_not_held_to_the_accepted_image_expectations(ingest_manifest, tmp_path):
    manifest = ingest_manifest(
        extra=(
            dict(
                split="",
                label="",
                source_path="notes.txt",
                image_path="",
                width="",
                height="",
                channels="",
                source_width="",
                status="rejected",
                reason="not_an_image",
            ),
        )
    )
    assert failed(validate(manifest, tmp_path)) == set()


def test_duplicate_pixels_are_only_a_warning(ingest_manifest, tmp_path):
    first = ingest_manifest()["pixel_sha256"].iloc[0]
    manifest = ingest_manifest(
        extra=(dict(split="train", label="actinic_keratosis", pixel_sha256=first),)
    )
    results = validate(manifest, tmp_path)

    assert failed(results) == {UNIQUE_PIXELS}
    assert not results[UNIQUE_PIXELS].critical
    assert critical_failures(list(results.values())) == []


def test_no_accepted_image_fails(ingest_manifest, tmp_path):
    manifest = ingest_manifest().assign(status="rejected", reason="corrupt_image")
    results = validate(manifest, tmp_path)

    assert results["at least one accepted image"].observed_value == 0
    assert not results["at least one accepted image"].success


def test_missing_column_fails_the_required_columns(ingest_manifest, tmp_path):
    chosen = policy()
    checks = resolve_content(ingest_manifest(), chosen)
    results = run_expectations(checks.manifest.drop(columns="source_mode"), chosen, tmp_path)

    required = next(r for r in results if r.name == "required columns")
    assert not required.success
    assert "source_mode" not in required.observed_value


def test_class_counts_cover_every_label_and_split():
    # Accepted counts by folder label, used by the label used: the last accepted nevus was
    # relabelled melanoma.
    rows = pd.DataFrame(
        {
            "folder_label": ["nevus", "nevus", "melanoma", "nevus", "nevus"],
            "label": ["nevus", "nevus", "melanoma", "nevus", "melanoma"],
            "split": ["train", "train", "test", "train", "test"],
            "status": ["accepted", "accepted", "accepted", "rejected", "accepted"],
            "decision": ["use", "drop", "use", "drop", "use"],
        }
    )
    counts = class_counts(rows).set_index(["label", "split"])

    assert len(counts) == 2 * len(LABELS)
    assert counts.loc[("nevus", "train")].to_dict() == {"accepted": 2, "used": 1}
    assert counts.loc[("melanoma", "test")].to_dict() == {"accepted": 1, "used": 2}
    assert counts.loc[("nevus", "test")].to_dict() == {"accepted": 1, "used": 0}
    assert counts["accepted"].sum() == 4


def test_every_expectation_in_the_suite_file_has_a_name_and_a_severity():
    suites = json.loads(SUITE_FILE.read_text())
    for suite in suites.values():
        for expectation in suite["expectations"]:
            assert expectation["description"]
            assert expectation["severity"] in ("critical", "warning")
