"""The reference-label check: reading ISIC's ground truth, and what validate does with it."""

from pathlib import Path

import pandas as pd
import pytest

from melanoma.data.duplicates import resolve_content
from melanoma.data.reference_labels import (
    ReferenceLabelsError,
    check_labels,
    isic_id,
    load_reference_labels,
)
from melanoma.labels import LABELS
from melanoma.params.data import DEFAULT_REFERENCE_CLASSES, ValidateParams

# The class column of each folder label's images in the default ingest_manifest rows.
CLASS_OF = DEFAULT_REFERENCE_CLASSES


def policy(reference: Path | None = None, **changes) -> ValidateParams:
    values = dict(
        min_width=64,
        min_height=64,
        min_images_per_class={"train": 1, "test": 1},
        on_label_conflict="drop",
        on_leak="drop_from_train",
        on_duplicate="keep_first",
        reference_labels=reference,
    )
    return ValidateParams(**{**values, **changes})


def agreeing_labels(manifest: pd.DataFrame) -> dict[str, str]:
    """A reference that agrees with every row of `manifest`: {image id: class column}."""
    return {row.image_id: CLASS_OF[row.label] for row in manifest.itertuples()}


def changed(manifest: pd.DataFrame) -> dict[str, tuple]:
    """source_path -> (decision, decision_reason, label, label_source) of the rows that are not
    plain uses under their folder label."""
    rows = manifest[
        (manifest["decision"] != "use")
        | (manifest["decision_reason"] != "")
        | (manifest["label_source"] != "folder")
    ]
    return {
        r.source_path: (r.decision, r.decision_reason, r.label, r.label_source)
        for r in rows.itertuples()
    }


# --- reading the reference file -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ISIC_0000043", "ISIC_0000043"),
        ("ISIC_0000043_downsampled", "ISIC_0000043"),
        ("ISIC_0025509(1)", "ISIC_0025509"),
        ("isic_0000043", "ISIC_0000043"),
        ("ISIC_00000431", None),  # 8 digits: not an ISIC id
        ("ISIC_123", None),
        ("photo_ISIC_0000043", None),
        ("", None),
    ],
)
def test_isic_id_is_the_prefix_of_the_name(name, expected):
    assert isic_id(name) == expected


def test_reference_is_read_one_class_per_id(reference_csv):
    path = reference_csv(
        {
            "ISIC_0000001": "MEL",
            "ISIC_0000002_downsampled": "BKL",
            # the same id twice with the same class: fine
            "ISIC_0000003": "NV",
            "ISIC_0000003_downsampled": "NV",
            # the same id twice with different classes: reported, left unresolved
            "ISIC_0000004": "NV",
            "ISIC_0000004_downsampled": "MEL",
        }
    )
    reference = load_reference_labels(path, policy(path))

    assert reference.rows == 6
    assert reference.classes == {
        "ISIC_0000001": "MEL",
        "ISIC_0000002": "BKL",
        "ISIC_0000003": "NV",
    }
    assert reference.ambiguous == {"ISIC_0000004": ["MEL", "NV"]}
    assert reference.named_label("MEL") == "melanoma"
    assert reference.named_label("BKL") == ""  # two keratoses: the reference cannot pick one
    assert reference.named_label("UNK") == ""
    assert len(reference.sha256) == 64


HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
ROW = "ISIC_0000001,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b"image\n", "no column(s) ['AK', 'BCC', 'BKL', 'DF', 'MEL', 'NV', 'SCC', 'VASC']"),
        (HEADER.encode(), "a header but no rows"),
        (HEADER.replace("image", "isic_id").encode() + ROW.encode(), "no 'image' column"),
        ((HEADER.strip() + ",EXTRA\n" + ROW.strip() + ",0.0\n").encode(), "unknown column(s)"),
        (HEADER.replace(",UNK", ",MEL").encode() + ROW.encode(), "unknown column(s) ['MEL.1']"),
        (
            HEADER.encode() + ROW.replace("0.0,0.0,0.0,0.0\n", "0.0,0.0,1.0,0.0\n").encode(),
            "1 row(s) not one-hot (exactly one class marked): line 2 ('ISIC_0000001': "
            "['MEL', 'SCC'] marked)",
        ),
        (
            HEADER.encode() + ROW.replace("1.0", "0.0", 1).encode(),
            "line 2 ('ISIC_0000001': none marked)",
        ),
        (HEADER.encode() + ROW.replace("1.0", "yes").encode(), "values other than 0 and 1"),
        (HEADER.encode() + ROW.replace("1.0", "0.5").encode(), "values other than 0 and 1"),
        (HEADER.encode() + ROW.replace("ISIC_0000001", "lesion-1").encode(), "without an ISIC id"),
        (HEADER.encode() + b'"unterminated,1.0\n', "not a readable CSV"),
        (HEADER.encode() + b"\xff\xfe\x00\x81,1\n", "not a readable CSV"),
    ],
)
def test_bad_reference_file_names_param_path_and_problem(tmp_path, content, problem):
    path = tmp_path / "ground_truth.csv"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(ReferenceLabelsError) as error:
        load_reference_labels(path, policy(path))

    message = str(error.value)
    assert message.startswith(f"validate.reference_labels: {path}: ")
    assert problem in message


def test_a_directory_is_not_a_reference_file(tmp_path):
    with pytest.raises(ReferenceLabelsError, match="no such file"):
        load_reference_labels(tmp_path, policy(tmp_path))


def test_extra_columns_are_accepted_once_named_in_params(reference_csv):
    columns = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK", "OTHER"]
    path = reference_csv({"ISIC_0000001": "OTHER"}, columns=columns)

    reference = load_reference_labels(path, policy(path, reference_other_classes=["UNK", "OTHER"]))

    assert reference.classes == {"ISIC_0000001": "OTHER"}
    assert reference.named_label("OTHER") == ""


# --- checking each image ------------------------------------------------------------------------


def test_each_image_is_checked_by_the_id_in_its_name(reference_csv):
    path = reference_csv(
        {
            "ISIC_0000001": "MEL",
            "ISIC_0000002": "MEL",
            "ISIC_0000003": "BKL",
            "ISIC_0000005": "NV",
            "ISIC_0000005_downsampled": "AK",
        }
    )
    reference = load_reference_labels(path, policy(path))
    images = pd.DataFrame(
        [
            ("melanoma", "ISIC_0000001"),
            ("nevus", "ISIC_0000002(1)"),
            ("seborrheic_keratosis", "ISIC_0000003"),
            ("melanoma", "ISIC_0000004"),
            ("nevus", "lesion"),
            ("nevus", "ISIC_0000005"),
        ],
        columns=["label", "name"],
    )

    checked = check_labels(images["label"], images["name"], reference)

    assert checked.to_dict("list") == {
        "reference_class": ["MEL", "MEL", "BKL", "", "", ""],
        "reference_check": [
            "agrees",
            "disagrees",
            "agrees",
            "not_in_reference",
            "no_isic_id",
            "ambiguous_id",
        ],
    }


def test_check_off_marks_every_image(ingest_manifest):
    checks = resolve_content(ingest_manifest(), policy())

    assert set(checks.manifest["reference_check"]) == {"off"}
    assert set(checks.manifest["label_source"]) == {"folder"}
    assert (checks.manifest["label"] == checks.manifest["folder_label"]).all()


# --- decisions on planted disagreements and conflicts -------------------------------------------


@pytest.fixture
def planted(ingest_manifest, reference_csv):
    """The default ingest rows (all agreeing with the reference) plus:
    - N: a nevus image the reference calls AK (a plain disagreement);
    - K: a nevus image the reference calls BKL (a disagreement it cannot relabel);
    - C: one image filed as nevus (train) and actinic keratosis (test), reference AK: a label
      conflict the reference decides, across splits;
    - U: one image filed as melanoma and seborrheic keratosis, not in the reference: a label
      conflict it cannot decide;
    - Z: an image absent from the reference.
    Returns (manifest, reference path).
    """
    n = len(ingest_manifest())
    ids = {name: f"ISIC_{n + i:07d}" for i, name in enumerate("NKCUZ")}
    extra = (
        dict(split="train", label="nevus", source_path=f"Train/nevus/{ids['N']}.jpg"),
        dict(split="train", label="nevus", source_path=f"Train/nevus/{ids['K']}.jpg"),
        dict(
            split="train",
            label="nevus",
            source_path=f"Train/nevus/{ids['C']}.jpg",
            pixel_sha256="c" * 64,
        ),
        dict(
            split="test",
            label="actinic_keratosis",
            source_path=f"Test/actinic keratosis/{ids['C']}.jpg",
            pixel_sha256="c" * 64,
        ),
        dict(
            split="train",
            label="melanoma",
            source_path=f"Train/melanoma/{ids['U']}.jpg",
            pixel_sha256="e" * 64,
        ),
        dict(
            split="train",
            label="seborrheic_keratosis",
            source_path=f"Train/seborrheic keratosis/{ids['U']}.jpg",
            pixel_sha256="e" * 64,
        ),
        dict(split="test", label="dermatofibroma", source_path=f"Test/df/{ids['Z']}.jpg"),
    )
    manifest = ingest_manifest(extra=extra)
    labels = agreeing_labels(ingest_manifest())
    labels.update({ids["N"]: "AK", ids["K"]: "BKL", ids["C"] + "_downsampled": "AK"})
    return manifest, reference_csv(labels)


def resolve(planted, **changes):
    manifest, path = planted
    chosen = policy(path, **changes)
    return resolve_content(manifest, chosen, load_reference_labels(path, chosen))


N, K, C, U = "ISIC_0000027", "ISIC_0000028", "ISIC_0000029", "ISIC_0000030"
Z = "ISIC_0000031"
C_NEVUS, C_AK = f"Train/nevus/{C}.jpg", f"Test/actinic keratosis/{C}.jpg"
U_MEL, U_SK = f"Train/melanoma/{U}.jpg", f"Train/seborrheic keratosis/{U}.jpg"


def test_relabel_takes_the_reference_label_and_resolves_the_conflict_it_decides(planted):
    checks = resolve(planted, on_reference_disagreement="relabel")

    assert changed(checks.manifest) == {
        f"Train/nevus/{N}.jpg": ("use", "", "actinic_keratosis", "reference"),
        # the conflict: the nevus copy goes, the actinic keratosis copy (in test) stays
        C_NEVUS: ("drop", "label_conflict_by_reference", "nevus", "folder"),
        # the reference does not know U: on_label_conflict (drop) as before
        U_MEL: ("drop", "label_conflict", "melanoma", "folder"),
        U_SK: ("drop", "label_conflict", "seborrheic_keratosis", "folder"),
    }
    manifest = checks.manifest.set_index("source_path")
    # BKL names two labels: the folder's label stays, the disagreement is still recorded
    assert manifest.loc[f"Train/nevus/{K}.jpg", ["label", "reference_check"]].tolist() == [
        "nevus",
        "disagrees",
    ]
    assert manifest.loc[f"Test/df/{Z}.jpg", "reference_check"] == "not_in_reference"
    assert manifest.loc[C_AK, ["decision", "reference_check"]].tolist() == ["use", "agrees"]
    assert manifest.loc[f"Train/nevus/{N}.jpg", "folder_label"] == "nevus"
    assert [c["reference_decides"] for c in checks.label_conflicts] == ["actinic_keratosis", None]
    assert checks.policy_failures == []


def test_drop_removes_the_disagreeing_images(planted):
    checks = resolve(planted, on_reference_disagreement="drop")

    assert changed(checks.manifest) == {
        f"Train/nevus/{N}.jpg": ("drop", "reference_disagreement", "nevus", "folder"),
        f"Train/nevus/{K}.jpg": ("drop", "reference_disagreement", "nevus", "folder"),
        C_NEVUS: ("drop", "label_conflict_by_reference", "nevus", "folder"),
        U_MEL: ("drop", "label_conflict", "melanoma", "folder"),
        U_SK: ("drop", "label_conflict", "seborrheic_keratosis", "folder"),
    }


def test_keep_keeps_folder_labels_but_the_reference_still_decides_conflicts(planted):
    checks = resolve(planted, on_reference_disagreement="keep", on_label_conflict="keep")

    assert changed(checks.manifest) == {
        C_NEVUS: ("drop", "label_conflict_by_reference", "nevus", "folder"),
    }


def test_fail_reports_the_disagreements_and_keeps_the_images(planted):
    checks = resolve(planted, on_reference_disagreement="fail")

    assert checks.policy_failures == [
        "2 image(s) whose folder label the reference contradicts and "
        "validate.on_reference_disagreement is fail: "
        f"Train/nevus/{N}.jpg (nevus, reference AK); Train/nevus/{K}.jpg (nevus, reference BKL)"
    ]
    manifest = checks.manifest.set_index("source_path")
    assert manifest.loc[f"Train/nevus/{N}.jpg", ["decision", "label"]].tolist() == ["use", "nevus"]


def test_fail_without_disagreements_does_not_fail(ingest_manifest, reference_csv):
    manifest = ingest_manifest()
    path = reference_csv(agreeing_labels(manifest))
    chosen = policy(path, on_reference_disagreement="fail")

    checks = resolve_content(manifest, chosen, load_reference_labels(path, chosen))

    assert checks.policy_failures == []
    assert set(checks.manifest["reference_check"]) == {"agrees"}


def test_undecided_conflict_kept_then_relabelled_becomes_a_duplicate(
    ingest_manifest, reference_csv
):
    # Filed as nevus and seborrheic keratosis; the reference says MEL, which fits neither
    # folder: it cannot decide the conflict. Kept (on_label_conflict keep), both copies are
    # relabelled melanoma, and then they are duplicates within melanoma.
    n = len(ingest_manifest())
    image = f"ISIC_{n:07d}"
    manifest = ingest_manifest(
        extra=(
            dict(
                split="train",
                label="nevus",
                source_path=f"Train/nevus/{image}.jpg",
                pixel_sha256="9" * 64,
            ),
            dict(
                split="train",
                label="seborrheic_keratosis",
                source_path=f"Train/sk/{image}.jpg",
                pixel_sha256="9" * 64,
            ),
        )
    )
    path = reference_csv({**agreeing_labels(ingest_manifest()), image: "MEL"})
    chosen = policy(path, on_label_conflict="keep")

    checks = resolve_content(manifest, chosen, load_reference_labels(path, chosen))

    assert changed(checks.manifest) == {
        f"Train/nevus/{image}.jpg": ("use", "", "melanoma", "reference"),
        f"Train/sk/{image}.jpg": ("drop", "duplicate", "melanoma", "reference"),
    }
    assert checks.label_conflicts[0]["reference_decides"] is None


def test_conflict_whose_copies_the_table_labels_differently_is_not_decided(
    ingest_manifest, reference_csv
):
    n = len(ingest_manifest())
    first, second = f"ISIC_{n:07d}", f"ISIC_{n + 1:07d}"
    manifest = ingest_manifest(
        extra=(
            dict(split="train", label="nevus", source_path=f"N/{first}.jpg", pixel_sha256="8" * 64),
            dict(
                split="train",
                label="melanoma",
                source_path=f"M/{second}.jpg",
                pixel_sha256="8" * 64,
            ),
        )
    )
    path = reference_csv({**agreeing_labels(ingest_manifest()), first: "NV", second: "MEL"})
    chosen = policy(path)

    checks = resolve_content(manifest, chosen, load_reference_labels(path, chosen))

    assert changed(checks.manifest) == {
        f"N/{first}.jpg": ("drop", "label_conflict", "nevus", "folder"),
        f"M/{second}.jpg": ("drop", "label_conflict", "melanoma", "folder"),
    }


def test_ids_with_two_labels_in_the_table_are_left_unresolved(ingest_manifest, reference_csv):
    manifest = ingest_manifest()
    labels = agreeing_labels(manifest)
    labels["ISIC_0000012_downsampled"] = "MEL"  # row 12 is a nevus, NV in the table too
    path = reference_csv(labels)
    chosen = policy(path, on_reference_disagreement="fail")

    reference = load_reference_labels(path, chosen)
    checks = resolve_content(manifest, chosen, reference)

    assert reference.ambiguous == {"ISIC_0000012": ["MEL", "NV"]}
    row = checks.manifest.set_index("image_id").loc["ISIC_0000012"]
    assert (row["reference_check"], row["label"], row["decision"]) == (
        "ambiguous_id",
        "nevus",
        "use",
    )
    assert checks.policy_failures == []


def test_every_label_maps_to_a_reference_column_by_default():
    assert set(DEFAULT_REFERENCE_CLASSES) == set(LABELS)
    assert DEFAULT_REFERENCE_CLASSES["seborrheic_keratosis"] == "BKL"
    assert DEFAULT_REFERENCE_CLASSES["pigmented_benign_keratosis"] == "BKL"
