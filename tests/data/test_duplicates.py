import pandas as pd
import pytest

from melanoma.config import ValidateParams
from melanoma.data.duplicates import resolve_content
from melanoma.data.manifest import VALIDATED_COLUMNS

SAME = "f" * 64  # the pixel hash planted on the images that should match


def policy(**choices: str) -> ValidateParams:
    return ValidateParams(
        min_width=64,
        min_height=64,
        min_images_per_class={"train": 1, "test": 1},
        **{"on_label_conflict": "keep", "on_leak": "keep", "on_duplicate": "keep_all", **choices},
    )


def decisions(manifest: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """source_path -> (decision, decision_reason), for the rows that are not plain uses."""
    changed = manifest[(manifest["decision"] != "use") | (manifest["decision_reason"] != "")]
    return {row.source_path: (row.decision, row.decision_reason) for row in changed.itertuples()}


def files(case: dict) -> set[str]:
    return {f["source_path"] for f in case["files"]}


@pytest.fixture
def planted(ingest_manifest) -> pd.DataFrame:
    """One group of each kind, with distinct pixels per group:
    - conflict: same pixels as melanoma and nevus in train;
    - leak: same nevus image in train and test;
    - duplicate: two copies of one dermatofibroma image in train.
    """
    return ingest_manifest(
        extra=(
            dict(
                split="train",
                label="melanoma",
                source_path="Train/melanoma/C.jpg",
                pixel_sha256="c" * 64,
            ),
            dict(
                split="train", label="nevus", source_path="Train/nevus/C.jpg", pixel_sha256="c" * 64
            ),
            dict(
                split="train", label="nevus", source_path="Train/nevus/L.jpg", pixel_sha256="a" * 64
            ),
            dict(
                split="test", label="nevus", source_path="Test/nevus/L.jpg", pixel_sha256="a" * 64
            ),
            dict(
                split="train",
                label="dermatofibroma",
                source_path="Train/d/D(1).jpg",
                pixel_sha256="d" * 64,
            ),
            dict(
                split="train",
                label="dermatofibroma",
                source_path="Train/d/D.jpg",
                pixel_sha256="d" * 64,
            ),
        )
    )


def test_each_planted_case_is_found_with_its_files(planted):
    checks = resolve_content(planted, policy())

    assert [files(c) for c in checks.label_conflicts] == [
        {"Train/melanoma/C.jpg", "Train/nevus/C.jpg"}
    ]
    assert checks.label_conflicts[0]["labels"] == ["melanoma", "nevus"]
    assert [files(c) for c in checks.leaks] == [{"Train/nevus/L.jpg", "Test/nevus/L.jpg"}]
    assert [files(c) for c in checks.duplicates] == [{"Train/d/D(1).jpg", "Train/d/D.jpg"}]
    # keep / keep / keep_all: every accepted image stays in use
    assert decisions(checks.manifest) == {}
    assert checks.policy_failures == []


def test_duplicate_group_names_the_members_of_each_group_only(planted):
    manifest = resolve_content(planted, policy()).manifest.set_index("source_path")

    assert manifest.loc["Train/nevus/L.jpg", "duplicate_group"] == "a" * 12
    assert manifest.loc["Test/nevus/L.jpg", "duplicate_group"] == "a" * 12
    assert (manifest["duplicate_group"] != "").sum() == 6


def test_conflict_drop_removes_every_image_of_the_group_in_both_splits(ingest_manifest):
    # A conflict that also leaks: dropping it leaves no leak, so on_leak=fail does not trigger.
    manifest = ingest_manifest(
        extra=(
            dict(split="train", label="melanoma", source_path="Train/m/X.jpg", pixel_sha256=SAME),
            dict(
                split="test",
                label="seborrheic_keratosis",
                source_path="Test/s/X.jpg",
                pixel_sha256=SAME,
            ),
        )
    )
    checks = resolve_content(manifest, policy(on_label_conflict="drop", on_leak="fail"))

    assert decisions(checks.manifest) == {
        "Train/m/X.jpg": ("drop", "label_conflict"),
        "Test/s/X.jpg": ("drop", "label_conflict"),
    }
    assert len(checks.leaks) == 1  # still reported: the data holds it
    assert checks.policy_failures == []


@pytest.mark.parametrize(
    ("on_leak", "dropped"),
    [("drop_from_train", "Train/nevus/L.jpg"), ("drop_from_test", "Test/nevus/L.jpg")],
)
def test_leak_policy_drops_the_copies_in_one_split(planted, on_leak, dropped):
    checks = resolve_content(planted, policy(on_leak=on_leak))

    assert decisions(checks.manifest) == {dropped: ("drop", "leak")}


def test_kept_conflict_that_leaks_is_then_handled_by_the_leak_policy(ingest_manifest):
    manifest = ingest_manifest(
        extra=(
            dict(split="train", label="nevus", source_path="Train/n/X.jpg", pixel_sha256=SAME),
            dict(
                split="test",
                label="actinic_keratosis",
                source_path="Test/a/X.jpg",
                pixel_sha256=SAME,
            ),
        )
    )
    checks = resolve_content(manifest, policy(on_label_conflict="keep", on_leak="drop_from_train"))

    assert decisions(checks.manifest) == {"Train/n/X.jpg": ("drop", "leak")}


def test_keep_first_keeps_the_first_copy_by_source_path(ingest_manifest):
    manifest = ingest_manifest(
        extra=tuple(
            dict(
                split="train",
                label="nevus",
                source_path=f"Train/nevus/{name}.jpg",
                pixel_sha256=SAME,
            )
            for name in ("c", "a", "b")
        )
    )
    checks = resolve_content(manifest, policy(on_duplicate="keep_first"))

    assert decisions(checks.manifest) == {
        "Train/nevus/b.jpg": ("drop", "duplicate"),
        "Train/nevus/c.jpg": ("drop", "duplicate"),
    }
    assert [f["source_path"] for f in checks.duplicates[0]["files"]] == [
        "Train/nevus/a.jpg",
        "Train/nevus/b.jpg",
        "Train/nevus/c.jpg",
    ]


def test_copies_in_other_labels_or_splits_are_not_within_label_duplicates(planted):
    checks = resolve_content(planted, policy(on_duplicate="keep_first"))

    # The conflict (two labels) and the leak (two splits) have one image per label and split.
    assert decisions(checks.manifest) == {"Train/d/D.jpg": ("drop", "duplicate")}


@pytest.mark.parametrize(
    ("param", "kind", "example"),
    [
        ("on_label_conflict", "label conflict", "Train/melanoma/C.jpg = Train/nevus/C.jpg"),
        ("on_leak", "train/test leak", "Test/nevus/L.jpg = Train/nevus/L.jpg"),
        ("on_duplicate", "within-label duplicate", "Train/d/D(1).jpg = Train/d/D.jpg"),
    ],
)
def test_fail_policy_reports_the_cases_and_keeps_the_images(planted, param, kind, example):
    checks = resolve_content(planted, policy(**{param: "fail"}))

    assert len(checks.policy_failures) == 1
    failure = checks.policy_failures[0]
    assert f"1 {kind} case(s) and validate.{param} is fail" in failure
    assert example in failure
    assert decisions(checks.manifest) == {}


def test_fail_policy_without_cases_does_not_fail(ingest_manifest):
    clean = ingest_manifest()
    checks = resolve_content(
        clean, policy(on_label_conflict="fail", on_leak="fail", on_duplicate="fail")
    )

    assert checks.policy_failures == []
    assert (checks.manifest["decision"] == "use").all()


def test_rows_rejected_at_ingest_are_carried_as_drops_with_their_reason(ingest_manifest):
    manifest = ingest_manifest(
        extra=(
            dict(
                split="train",
                label="",
                source_path="Train/x/.DS_Store",
                status="rejected",
                reason="not_an_image",
                pixel_sha256="",
            ),
            dict(
                split="",
                label="",
                source_path="README.md",
                status="rejected",
                reason="outside_class_folder",
                pixel_sha256="",
            ),
            # Rejected rows never join a group, even with a planted hash.
            dict(
                split="train",
                label="nevus",
                source_path="Train/nevus/bad.jpg",
                status="rejected",
                reason="corrupt_image",
                pixel_sha256="0" * 64,
            ),
        )
    )
    checks = resolve_content(manifest, policy())

    assert list(checks.manifest.columns) == VALIDATED_COLUMNS
    assert sorted(checks.manifest["source_path"]) == sorted(manifest["source_path"])
    assert decisions(checks.manifest) == {
        "Train/x/.DS_Store": ("drop", "ingest:not_an_image"),
        "README.md": ("drop", "ingest:outside_class_folder"),
        "Train/nevus/bad.jpg": ("drop", "ingest:corrupt_image"),
    }
    assert checks.duplicates == []
