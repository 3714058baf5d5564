import logging
from pathlib import Path

import pytest

from melanoma.data.table_sources import (
    CONFLICTING_LABELS,
    LABEL_TABLE,
    MISSING_IMAGE,
    MISSING_LESION_ID,
    NOT_IN_TABLE,
    UNKNOWN_LABEL,
    TableSourceError,
    open_table_source,
)
from melanoma.params.data import TableSource
from tests.helpers import table_source_params, write_table_source

PARAM = "data.sources[1]"


def source(path: Path, **changes) -> TableSource:
    return TableSource.model_validate(table_source_params(path, **changes))


def by_path(files) -> dict:
    return {f.path: f for f in files}


def test_every_file_and_every_row_is_placed_or_given_its_problem(tmp_path, image_bytes, caplog):
    rows = [
        {"lesion_id": "HAM_1", "image_id": "ISIC_0000001", "dx": "mel"},
        {"lesion_id": "HAM_1", "image_id": "ISIC_0000002", "dx": "mel"},
        {"lesion_id": "HAM_2", "image_id": "ISIC_0000003", "dx": "freckle"},
        {"lesion_id": "HAM_3", "image_id": "ISIC_0000004", "dx": "nv"},
        {"lesion_id": "HAM_3", "image_id": "ISIC_0000004", "dx": "bkl"},
        {"lesion_id": "", "image_id": "ISIC_0000005", "dx": "nv"},
        {"lesion_id": "HAM_4", "image_id": "ISIC_0000006", "dx": "df"},
    ]
    images = {f"ISIC_000000{n}.jpg": image_bytes(n) for n in (1, 2, 3, 4, 5)}
    images["stray.jpg"] = image_bytes(9)
    root = write_table_source(tmp_path / "ham", rows, images)
    (root / "README.md").write_text("about\n")

    with caplog.at_level(logging.WARNING):
        opened = open_table_source(source(root), PARAM)
    files = by_path(opened.files)

    assert files["images/ISIC_0000001.jpg"].label == "melanoma"
    assert files["images/ISIC_0000001.jpg"].lesion_id == "HAM_1"
    assert files["images/ISIC_0000001.jpg"].split == "train"
    assert not files["images/ISIC_0000002.jpg"].problem
    problems = {path: f.problem for path, f in files.items() if f.problem}
    assert problems == {
        "images/ISIC_0000003.jpg": UNKNOWN_LABEL,
        "images/ISIC_0000004.jpg": CONFLICTING_LABELS,
        "images/ISIC_0000005.jpg": MISSING_LESION_ID,
        "images/ISIC_0000006": MISSING_IMAGE,
        "images/stray.jpg": NOT_IN_TABLE,
        "README.md": NOT_IN_TABLE,
        "metadata.csv": LABEL_TABLE,
    }
    # Each message names the table row (the header is line 1) and what is wrong with it.
    assert "line 4 of metadata.csv" in files["images/ISIC_0000003.jpg"].detail
    assert "'freckle'" in files["images/ISIC_0000003.jpg"].detail
    assert "line 5, 6 of metadata.csv" in files["images/ISIC_0000004.jpg"].detail
    assert "line 8 of metadata.csv" in files["images/ISIC_0000006"].detail
    # One warning per kind of problem, naming the source by its param.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith(f"{PARAM} (ham): 1 file(s) unknown_label") for w in warnings)
    assert any("missing_image" in w and "ISIC_0000006" in w for w in warnings)


def test_one_hot_table_as_isic_publishes_its_ground_truth(tmp_path, image_bytes):
    table = (
        "image,MEL,NV,UNK\n"
        "ISIC_0000001,1.0,0.0,0.0\n"
        "ISIC_0000002,0.0,1.0,0.0\n"
        "ISIC_0000003,0.0,0.0,1.0\n"
        "ISIC_0000004,1.0,1.0,0.0\n"
    )
    images = {f"ISIC_000000{n}.jpg": image_bytes(n) for n in (1, 2, 3, 4)}
    root = write_table_source(tmp_path / "isic", [], images, table=table)
    params = source(
        root,
        id_column="image",
        label_column=None,
        lesion_column=None,
        labels={"MEL": "melanoma", "NV": "nevus"},
    )
    files = by_path(open_table_source(params, PARAM).files)
    assert files["images/ISIC_0000001.jpg"].label == "melanoma"
    assert files["images/ISIC_0000002.jpg"].label == "nevus"
    # UNK is a column of the table but names none of the nine labels.
    assert files["images/ISIC_0000003.jpg"].problem == UNKNOWN_LABEL
    assert "marks none" in files["images/ISIC_0000003.jpg"].detail
    assert files["images/ISIC_0000004.jpg"].problem == UNKNOWN_LABEL
    assert "['MEL', 'NV']" in files["images/ISIC_0000004.jpg"].detail


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("image_id,dx\nISIC_0000001,mel\n", "no column(s) ['lesion_id']"),
        ("lesion_id,image_id,dx\n", "a header but no rows"),
    ],
    ids=["missing column", "no rows"],
)
def test_an_unusable_table_stops_naming_the_source_file_and_problem(tmp_path, table, message):
    root = write_table_source(tmp_path / "ham", [], {}, table=table)
    with pytest.raises(TableSourceError) as caught:
        open_table_source(source(root), PARAM)
    text = str(caught.value)
    assert text.startswith(f"{PARAM} (ham).table: {root / 'metadata.csv'}")
    assert message in text


def write_isic2017(root: Path, image_bytes) -> Path:
    """ISIC 2017 as published: a folder and a part 3 ground truth per split, 0.0/1.0 columns."""
    splits = {
        "Training": "ISIC_0000001,1.0,0.0\nISIC_0000002,0.0,1.0\nISIC_0000003,0.0,0.0\n",
        "Validation": "ISIC_0000011,0.0,0.0\nISIC_0000012,1.0,1.0\n",
    }
    for n, (split, rows) in enumerate(splits.items()):
        folder = root / f"ISIC-2017_{split}_Data"
        folder.mkdir(parents=True)
        for line in rows.splitlines():
            image_id = line.split(",")[0]
            (folder / f"{image_id}.jpg").write_bytes(image_bytes(n))
        table = f"image_id,melanoma,seborrheic_keratosis\n{rows}"
        (root / f"ISIC-2017_{split}_Part3_GroundTruth.csv").write_text(table)
    return root


def isic2017_params(root: Path, **changes) -> TableSource:
    parts = [
        {"images": f"ISIC-2017_{s}_Data", "table": f"ISIC-2017_{s}_Part3_GroundTruth.csv"}
        for s in ("Training", "Validation")
    ]
    return TableSource.model_validate(
        {
            "name": "isic2017",
            "kind": "table",
            "path": str(root),
            "parts": parts,
            "id_column": "image_id",
            "label_column": None,
            "labels": {"melanoma": "melanoma", "seborrheic_keratosis": "seborrheic_keratosis"},
            "unmarked_label": "nevus",
            **changes,
        }
    )


def test_isic_2017_layout_one_table_per_split_and_a_row_marking_neither_is_a_nevus(
    tmp_path, image_bytes
):
    root = write_isic2017(tmp_path / "isic2017", image_bytes)
    (root / "SHA256SUMS").write_text("...\n")

    files = by_path(open_table_source(isic2017_params(root), PARAM).files)

    training, validation = "ISIC-2017_Training_Data", "ISIC-2017_Validation_Data"
    assert files[f"{training}/ISIC_0000001.jpg"].label == "melanoma"
    assert files[f"{training}/ISIC_0000002.jpg"].label == "seborrheic_keratosis"
    assert files[f"{training}/ISIC_0000003.jpg"].label == "nevus"
    assert files[f"{validation}/ISIC_0000011.jpg"].label == "nevus"
    # Both columns marked: no label can be trusted.
    assert files[f"{validation}/ISIC_0000012.jpg"].problem == UNKNOWN_LABEL
    assert "line 3 of ISIC-2017_Validation_Part3_GroundTruth.csv" in (
        files[f"{validation}/ISIC_0000012.jpg"].detail
    )
    assert {f.split for f in files.values() if f.label} == {"train"}
    assert files["ISIC-2017_Training_Part3_GroundTruth.csv"].problem == LABEL_TABLE
    assert files["ISIC-2017_Validation_Part3_GroundTruth.csv"].problem == LABEL_TABLE
    assert files["SHA256SUMS"].problem == NOT_IN_TABLE
    # Every file and nothing else.
    assert len(files) == 5 + 2 + 1


def test_a_part_can_be_the_test_split_and_an_image_of_another_part_is_not_in_its_table(
    tmp_path, image_bytes
):
    root = write_isic2017(tmp_path / "isic2017", image_bytes)
    # An image of the training table dropped into the validation folder.
    (root / "ISIC-2017_Validation_Data" / "ISIC_0000001.jpg").write_bytes(image_bytes(5))
    params = isic2017_params(root)
    parts = [params.parts[0], params.parts[1].model_copy(update={"split": "test"})]

    files = by_path(open_table_source(params.model_copy(update={"parts": parts}), PARAM).files)

    assert files["ISIC-2017_Training_Data/ISIC_0000001.jpg"].split == "train"
    assert files["ISIC-2017_Validation_Data/ISIC_0000011.jpg"].split == "test"
    stray = files["ISIC-2017_Validation_Data/ISIC_0000001.jpg"]
    assert stray.problem == NOT_IN_TABLE
    assert "ISIC-2017_Validation_Part3_GroundTruth.csv" in stray.detail


def write_isic2019(root: Path, image_bytes, metadata: str) -> Path:
    """ISIC 2019 as published: one-hot ground truth, lesion ids in a metadata CSV."""
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    truth = "image,MEL,NV,BCC,UNK\n"
    for n, row in enumerate(["1.0,0.0,0.0,0.0", "0.0,1.0,0.0,0.0", "0.0,0.0,1.0,0.0"], 1):
        truth += f"ISIC_000000{n},{row}\n"
        (root / "ISIC_2019_Training_Input" / f"ISIC_000000{n}.jpg").write_bytes(image_bytes(n))
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text(truth)
    (root / "ISIC_2019_Training_Metadata.csv").write_text(metadata)
    return root


def isic2019_params(root: Path) -> TableSource:
    return TableSource.model_validate(
        {
            "name": "bcn",
            "kind": "table",
            "path": str(root),
            "images": "ISIC_2019_Training_Input",
            "table": "ISIC_2019_Training_GroundTruth.csv",
            "metadata": "ISIC_2019_Training_Metadata.csv",
            "id_column": "image",
            "label_column": None,
            "lesion_column": "lesion_id",
            "labels": {"MEL": "melanoma", "NV": "nevus", "BCC": "basal_cell_carcinoma"},
        }
    )


def test_isic_2019_layout_takes_lesion_ids_from_the_metadata_joined_by_image_id(
    tmp_path, image_bytes
):
    metadata = (
        "image,age_approx,anatom_site_general,lesion_id,sex\n"
        "ISIC_0000002,55,,BCN_0000002,male\n"
        "ISIC_0000001,,back,BCN_0000001,\n"
    )
    root = write_isic2019(tmp_path / "bcn", image_bytes, metadata)

    files = by_path(open_table_source(isic2019_params(root), PARAM).files)

    first, second, third = (
        files[f"ISIC_2019_Training_Input/ISIC_000000{n}.jpg"] for n in (1, 2, 3)
    )
    assert (first.label, first.lesion_id) == ("melanoma", "BCN_0000001")
    assert (second.label, second.lesion_id) == ("nevus", "BCN_0000002")
    # No metadata row: its lesion is unknown, so it cannot be kept on one side of a split.
    assert third.problem == MISSING_LESION_ID
    assert "ISIC_2019_Training_Metadata.csv" in third.detail
    assert files["ISIC_2019_Training_Metadata.csv"].problem == LABEL_TABLE
    assert files["ISIC_2019_Training_GroundTruth.csv"].problem == LABEL_TABLE


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("image,age_approx\nISIC_0000001,55\n", "no column(s) ['lesion_id']"),
        ("image,lesion_id\nISIC_9999999,BCN_1\n", "does not join"),
        ("", "is not a readable CSV"),
    ],
    ids=["no lesion column", "no id in common", "empty file"],
)
def test_a_metadata_csv_that_cannot_give_lesions_stops_naming_it(
    tmp_path, image_bytes, metadata, message
):
    root = write_isic2019(tmp_path / "bcn", image_bytes, metadata)
    with pytest.raises(TableSourceError) as caught:
        open_table_source(isic2019_params(root), PARAM)
    assert str(caught.value).startswith(f"{PARAM} (bcn).metadata: ")
    assert "ISIC_2019_Training_Metadata.csv" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"table": "t.csv"}, "either `table`"),
        ({"images": "x"}, "`images` belongs in each of `parts`"),
        ({"unmarked_label": "freckle"}, "not among the nine labels"),
        ({"label_column": "dx"}, "unmarked_label is for one-hot tables"),
        ({"metadata": "m.csv"}, "metadata is read for lesion_column"),
    ],
    ids=["table and parts", "images outside parts", "unknown label", "not one-hot", "no lesion"],
)
def test_inconsistent_table_params_fail_naming_the_param(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        isic2017_params(tmp_path, **changes)
