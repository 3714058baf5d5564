import json
from pathlib import Path

import pytest
import yaml

from melanoma.data.manifest import INGEST_COLUMNS, VALIDATED_COLUMNS, read_manifest, write_manifest
from melanoma.params.data import DEFAULT_REFERENCE_CLASSES as CLASS_OF
from stages import validate as stage

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
AGREEMENT = "folder labels agree with the reference labels (observed: images that disagree)"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project dir, made the cwd; project(manifest, **validate_params) writes its inputs
    (reference_labels null unless given)."""
    monkeypatch.chdir(tmp_path)

    def write(manifest, **validate_params):
        raw = yaml.safe_load(PARAMS_YAML.read_text())
        # The shared reference is not beside tmp_path: tests that want the check pass a file.
        raw["validate"].update(
            {
                "min_images_per_class": {"train": 2, "test": 1},
                "reference_labels": None,
                **validate_params,
            }
        )
        Path("params.yaml").write_text(yaml.safe_dump(raw))
        write_manifest(manifest, stage.INGESTED_MANIFEST, INGEST_COLUMNS)

    return write


def test_stage_writes_a_decision_for_every_row_and_the_report(project, ingest_manifest):
    manifest = ingest_manifest(
        extra=(
            dict(
                split="train", label="nevus", source_path="Train/nevus/A.jpg", pixel_sha256="a" * 64
            ),
            dict(
                split="train",
                label="nevus",
                source_path="Train/nevus/A(1).jpg",
                pixel_sha256="a" * 64,
            ),
            dict(
                split="",
                label="",
                source_path="Thumbs.db",
                status="rejected",
                reason="not_an_image",
            ),
        )
    )
    project(manifest)
    stage.main()

    validated = read_manifest(stage.VALIDATED_MANIFEST, VALIDATED_COLUMNS)
    assert sorted(validated["source_path"]) == sorted(manifest["source_path"])
    report = json.loads(stage.REPORT.read_text())
    assert report["success"] is True
    assert report["decisions"] == {"use": len(manifest) - 2, "drop": 2}
    assert report["removed"] == {"duplicate": 1, "ingest:not_an_image": 1}
    assert [len(d["files"]) for d in report["duplicates"]] == [2]
    assert report["class_counts"]["used"]["nevus"] == {"train": 3, "test": 1}
    assert all(
        {"name", "column", "success", "critical", "observed_value"} <= set(e)
        for e in report["expectations"]
    )
    assert (stage.DATA_DOCS / "index.html").is_file()


def test_critical_failure_exits_non_zero_after_writing_the_report(project, ingest_manifest, caplog):
    project(ingest_manifest(extra=(dict(split="test", label="freckle"),)))

    with pytest.raises(SystemExit) as exit_info:
        stage.main()

    assert exit_info.value.code == 1
    report = json.loads(stage.REPORT.read_text())
    assert report["success"] is False
    assert [f.split(" failed")[0] for f in report["failures"]] == [
        "manifest: labels within the nine"
    ]
    assert "labels within the nine" in caplog.text


def test_fail_policy_exits_non_zero_naming_the_files(project, ingest_manifest):
    project(
        ingest_manifest(
            extra=(
                dict(
                    split="train",
                    label="melanoma",
                    source_path="Train/m/X.jpg",
                    pixel_sha256="c" * 64,
                ),
                dict(
                    split="test",
                    label="melanoma",
                    source_path="Test/m/X.jpg",
                    pixel_sha256="c" * 64,
                ),
            )
        ),
        on_leak="fail",
    )

    with pytest.raises(SystemExit):
        stage.main()

    failures = json.loads(stage.REPORT.read_text())["failures"]
    assert failures == [
        "1 train/test leak case(s) and validate.on_leak is fail: Test/m/X.jpg = Train/m/X.jpg"
    ]


def test_stage_checks_labels_against_the_reference_and_records_lineage(
    project, ingest_manifest, reference_csv
):
    base = ingest_manifest()
    n = len(base)
    manifest = ingest_manifest(
        extra=(
            # filed as seborrheic keratosis, melanoma for ISIC
            dict(
                split="train",
                label="seborrheic_keratosis",
                source_path=f"Train/sk/ISIC_{n:07d}.jpg",
            ),
            # the same picture as nevus and actinic keratosis, AK for ISIC
            dict(
                split="train",
                label="nevus",
                source_path=f"Train/nevus/ISIC_{n + 1:07d}.jpg",
                pixel_sha256="c" * 64,
            ),
            dict(
                split="train",
                label="actinic_keratosis",
                source_path=f"Train/ak/ISIC_{n + 1:07d}.jpg",
                pixel_sha256="c" * 64,
            ),
        )
    )
    labels = {row.image_id: CLASS_OF[row.label] for row in base.itertuples()}
    labels.update({f"ISIC_{n:07d}": "MEL", f"ISIC_{n + 1:07d}": "AK"})
    labels.pop("ISIC_0000000")  # one image the reference does not know
    reference = reference_csv(labels)
    project(manifest, reference_labels=str(reference))

    stage.main()

    validated = read_manifest(stage.VALIDATED_MANIFEST, VALIDATED_COLUMNS).set_index("source_path")
    relabelled = validated.loc[f"Train/sk/ISIC_{n:07d}.jpg"]
    assert relabelled[["label", "folder_label", "label_source", "reference_class"]].tolist() == [
        "melanoma",
        "seborrheic_keratosis",
        "reference",
        "MEL",
    ]
    assert validated.loc[f"Train/nevus/ISIC_{n + 1:07d}.jpg", "decision_reason"] == (
        "label_conflict_by_reference"
    )
    report = json.loads(stage.REPORT.read_text())
    found = report["reference_labels"]
    assert found["file"] == str(reference)
    # all but ISIC_0000000 agree, and so does the actinic keratosis copy of the conflict
    assert found["images"] == {"agrees": len(base), "disagrees": 2, "not_in_reference": 1}
    assert found["label_conflicts_decided"] == 1
    assert found["recovered_from_conflicts"] == {"actinic_keratosis": {"train": 1, "test": 0}}
    assert [
        (p["folder_label"], p["reference_class"], p["images"]) for p in found["disagreement_pairs"]
    ] == [("nevus", "AK", 1), ("seborrheic_keratosis", "MEL", 1)]
    assert {
        (d["source_path"], d["reference_label"], d["action"]) for d in found["disagreements"]
    } == {
        (f"Train/sk/ISIC_{n:07d}.jpg", "melanoma", "relabelled"),
        (f"Train/nevus/ISIC_{n + 1:07d}.jpg", "actinic_keratosis", "dropped_conflicting_copy"),
    }
    agreement = next(e for e in report["expectations"] if e["name"] == AGREEMENT)
    assert (agreement["success"], agreement["critical"], agreement["observed_value"]) == (
        False,
        False,
        2,
    )
    assert report["class_counts"]["used"]["melanoma"] == {"train": 3, "test": 1}
    assert report["class_counts"]["accepted"]["seborrheic_keratosis"] == {"train": 3, "test": 1}


def test_class_left_with_too_few_training_images_is_warned_by_name(
    project, ingest_manifest, reference_csv, caplog
):
    # Both training images of seborrheic keratosis are melanomas for ISIC: relabelled, the
    # class keeps no training image. Present in the source, so a warning, not a failure.
    manifest = ingest_manifest()
    labels = {row.image_id: CLASS_OF[row.label] for row in manifest.itertuples()}
    sk_train = manifest[
        (manifest["label"] == "seborrheic_keratosis") & (manifest["split"] == "train")
    ]
    labels.update({image: "MEL" for image in sk_train["image_id"]})
    project(manifest, reference_labels=str(reference_csv(labels)))

    stage.main()

    report = json.loads(stage.REPORT.read_text())
    assert report["success"] is True
    assert report["too_few_training_images"] == {
        "threshold": 2,
        "labels": {"seborrheic_keratosis": 0},
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "class seborrheic_keratosis has 0 training image(s) in use after the decisions, below "
        "validate.min_images_per_class.train=2: too few to learn it"
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b"id,MEL\nISIC_0000001,1\n", "no 'image' column"),
    ],
)
def test_bad_reference_file_stops_before_any_output(
    project, ingest_manifest, tmp_path, caplog, content, problem
):
    reference = tmp_path / "truth.csv"
    if content is not None:
        reference.write_bytes(content)
    project(ingest_manifest(), reference_labels=str(reference))

    with pytest.raises(SystemExit) as exit_info:
        stage.main()

    assert exit_info.value.code == 1
    assert f"validate.reference_labels: {reference}: " in caplog.text
    assert problem in caplog.text
    assert not stage.VALIDATED_MANIFEST.exists()
    assert not stage.REPORT.exists()


def test_reference_check_off_with_null(project, ingest_manifest):
    project(ingest_manifest())

    stage.main()

    validated = read_manifest(stage.VALIDATED_MANIFEST, VALIDATED_COLUMNS)
    assert set(validated["reference_check"]) == {"off"}
    assert json.loads(stage.REPORT.read_text())["reference_labels"] == {"file": None}
