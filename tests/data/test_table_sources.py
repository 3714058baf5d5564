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
