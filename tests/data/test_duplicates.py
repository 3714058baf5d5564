import pandas as pd
import pytest

from melanoma.data.duplicates import resolve_content
from melanoma.data.manifest import VALIDATED_COLUMNS
from melanoma.params.data import ValidateParams

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


def two_sources(ingest_manifest, isic_first: bool = True) -> pd.DataFrame:
    """The default collection rows (source isic, ISIC_0000000..26, 2 train + 1 test per label)
    and a table source `ham` holding:
    - ISIC_0000002, a test image of the collection, at another size (other pixels), lesion L2,
      and ISIC_0100002, another photograph of lesion L2;
    - ISIC_0000000, a training image of the collection, lesion L0, and ISIC_0100000 (L0 too);
    - ISIC_0100009, a re-encoded copy of the collection's ISIC_0000003 (same pHash).
    """
    collection = ingest_manifest()
    ham_rows = [
        ("ISIC_0000002", "test", "L2"),
        ("ISIC_0100002", "train", "L2"),
        ("ISIC_0000000", "train", "L0"),
        ("ISIC_0100000", "train", "L0"),
        ("ISIC_0100009", "train", "L9"),
    ]
    ham = ingest_manifest(
        per_split={"train": 0},
        extra=tuple(
            dict(
                source="ham",
                split="train",
                label="actinic_keratosis",
                source_path=f"images/{image_id}.jpg",
                lesion_id=lesion,
            )
            for image_id, _, lesion in ham_rows
        ),
    )
    # Numbered from 0 again: give them pixels and pHashes of their own.
    ham["pixel_sha256"] = [f"{i:064x}".replace("0", "e") for i in range(len(ham))]
    ham["perceptual_hash"] = [f"{i:016x}".replace("0", "e") for i in range(len(ham))]
    near = collection.index[collection["image_id"] == "ISIC_0000003"][0]
    ham.loc[ham["image_id"] == "ISIC_0100009", "perceptual_hash"] = collection.at[
        near, "perceptual_hash"
    ]
    parts = [collection, ham] if isic_first else [ham, collection]
    return pd.concat(parts, ignore_index=True)


def test_one_copy_per_isic_id_and_no_lesion_on_both_sides_of_the_test_split(ingest_manifest):
    checks = resolve_content(
        two_sources(ingest_manifest), policy(on_leak="drop_from_train", near_duplicate_distance=0)
    )
    manifest = checks.manifest.set_index(["source", "source_path"])
    decided = {
        key: (row.decision, row.decision_reason)
        for key, row in manifest.iterrows()
        if row.decision != "use"
    }
    assert decided == {
        # the test copy stays whole in the test split; the other source's copy goes
        ("ham", "images/ISIC_0000002.jpg"): ("drop", "same_image_other_source"),
        # the collection is listed first: its copy of a training image is the one kept
        ("ham", "images/ISIC_0000000.jpg"): ("drop", "same_image_other_source"),
        # another photograph of the lesion of a test image never reaches training
        ("ham", "images/ISIC_0100002.jpg"): ("drop", "same_group_as_test"),
    }
    group = manifest["group"]
    # Lesion L0 and the collection's copy of its image are one group, kept for training.
    assert (
        group["ham", "images/ISIC_0100000.jpg"]
        == group["isic", "Train/actinic_keratosis/ISIC_0000000.jpg"]
    )
    # The re-encoded copy is found by its pHash and grouped with its original.
    assert group["ham", "images/ISIC_0100009.jpg"] == group["isic", manifest.index[3][1]]
    [near] = checks.near_duplicates
    assert {(f["source"], f["source_path"]) for f in near["files"]} == {
        ("ham", "images/ISIC_0100009.jpg"),
        ("isic", manifest.index[3][1]),
    }
    [copy] = [c for c in checks.same_image_copies if c["isic_id"] == "ISIC_0000002"]
    assert copy["kept"]["source"] == "isic" and copy["kept"]["split"] == "test"
    [excluded] = checks.test_group_exclusions
    assert excluded["source_path"] == "images/ISIC_0100002.jpg"
    assert excluded["test_image"] == "isic/Test/actinic_keratosis/ISIC_0000002.jpg"


def test_the_test_copy_is_kept_whichever_source_comes_first(ingest_manifest):
    manifest = resolve_content(
        two_sources(ingest_manifest, isic_first=False), policy(on_leak="drop_from_train")
    ).manifest.set_index(["source", "source_path"])
    assert manifest.at[("isic", "Test/actinic_keratosis/ISIC_0000002.jpg"), "decision"] == "use"
    # Without the test copy's source first, the training copy of the other id is the table's.
    assert manifest.at[("ham", "images/ISIC_0000000.jpg"), "decision"] == "use"
    assert (
        manifest.at[("isic", "Train/actinic_keratosis/ISIC_0000000.jpg"), "decision_reason"]
        == "same_image_other_source"
    )


@pytest.mark.parametrize(
    ("on_leak", "dropped"),
    [
        ("keep", set()),
        ("drop_from_test", {"isic/Test/actinic_keratosis/ISIC_0000002.jpg"}),
    ],
)
def test_the_leak_policy_decides_for_lesion_groups_too(ingest_manifest, on_leak, dropped):
    checks = resolve_content(two_sources(ingest_manifest), policy(on_leak=on_leak))
    manifest = checks.manifest
    lesion = manifest[manifest["decision_reason"] == "same_group_as_test"]
    assert set(lesion["source"] + "/" + lesion["source_path"]) == dropped


def test_a_lesion_leak_with_on_leak_fail_names_its_group(ingest_manifest):
    checks = resolve_content(two_sources(ingest_manifest), policy(on_leak="fail"))
    [failure] = checks.policy_failures
    assert "both train and test" in failure and "validate.on_leak is fail" in failure


def test_near_duplicates_without_isic_ids_are_reported(ingest_manifest):
    manifest = ingest_manifest(
        extra=(
            dict(split="train", label="nevus", source_path="Train/nevus/a.jpg"),
            dict(split="train", label="nevus", source_path="Train/nevus/b.jpg"),
        )
    )
    manifest.loc[manifest.index[-2:], "perceptual_hash"] = "0123456789abcdef"
    checks = resolve_content(manifest, policy(near_duplicate_distance=0))
    [pair] = checks.near_duplicates
    assert {f["source_path"] for f in pair["files"]} == {"Train/nevus/a.jpg", "Train/nevus/b.jpg"}
    groups = checks.manifest.set_index("source_path")["group"]
    assert groups["Train/nevus/a.jpg"] == groups["Train/nevus/b.jpg"]
