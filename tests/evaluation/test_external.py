import shutil

import pandas as pd
import pytest
from PIL import Image

from melanoma.data.images import pixel_sha256
from melanoma.data.manifest import INGEST_COLUMNS, REJECTED
from melanoma.evaluation.external import (
    EXCLUDED,
    IN_TRAINING_COLLECTION,
    SCORED,
    ExternalSetError,
    check_folder,
    read_external_set,
)
from melanoma.params.data import IngestParams
from melanoma.params.evaluation import ExternalSet

INGEST = IngestParams(image_size=40)


def _collection(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=INGEST_COLUMNS, fill_value="")


def test_every_file_is_scored_rejected_or_excluded_with_a_reason(external_folder, tmp_path):
    (external_folder / "nevus" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (external_folder / "nevus" / "empty.jpg").write_bytes(b"")
    (external_folder / "solar lentigo").mkdir()
    shutil.copy(external_folder / "nevus" / "ISIC_9901000.jpg", external_folder / "solar lentigo")
    # A copy of a training image under another name, and an image sharing a training ISIC id.
    seen = external_folder / "melanoma" / "ISIC_9900000.jpg"
    shutil.copy(seen, external_folder / "melanoma" / "copy_of_training.jpg")
    collection = _collection(
        [
            {
                "source_path": "Train/melanoma/ISIC_9900000.jpg",
                "pixel_sha256": pixel_sha256(Image.open(seen)),
                "status": "accepted",
            },
            {
                "source_path": "Test/nevus/ISIC_9901001.jpg",
                "pixel_sha256": "x",
                "status": "accepted",
            },
        ]
    )

    images = read_external_set(
        ExternalSet(name="ext", path=external_folder), INGEST, collection, tmp_path / "scratch"
    )

    files = images.files.set_index("source_path")
    on_disk = sorted(
        p.relative_to(external_folder).as_posix() for p in external_folder.rglob("*.*")
    )
    assert sorted(files.index) == on_disk  # every file accounted for, once
    assert files.loc["labels.csv", "reason"] == "outside_class_folder"
    assert files.loc["nevus/broken.jpg", "status"] == REJECTED
    assert files.loc["nevus/empty.jpg", "reason"] == "empty_file"
    assert files.loc["solar lentigo/ISIC_9901000.jpg", "reason"] == "unknown_class"
    excluded = files[files["status"] == EXCLUDED]
    assert set(excluded.index) == {
        "melanoma/ISIC_9900000.jpg",  # same pixels (and id)
        "melanoma/copy_of_training.jpg",  # same pixels, other name
        "nevus/ISIC_9901001.jpg",  # same ISIC id, other pixels
    }
    assert (excluded["reason"] == IN_TRAINING_COLLECTION).all()
    assert "Test/nevus/ISIC_9901001.jpg" in excluded.loc["nevus/ISIC_9901001.jpg", "detail"]

    counts = images.accounting()
    assert counts["files"] == len(on_disk) and counts["excluded"] == 3
    assert counts["unknown_class_folders"] == {"solar lentigo": 1}
    assert counts["scored_per_label"] == {"basal_cell_carcinoma": 6, "melanoma": 5, "nevus": 5}
    # Scored images are ingested exactly as ingest writes them.
    assert len(images.paths) == counts["scored"] == 16
    assert Image.open(images.paths[0]).size == (40, 40)
    assert (images.scored["status"] == SCORED).all()
    assert images.label_indices.tolist() == [1] * 6 + [3] * 5 + [4] * 5


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_unusable_folder_stops_with_the_param_and_the_path(tmp_path, problem):
    folder = tmp_path / "ext"
    if problem == "empty":
        (folder / "melanoma").mkdir(parents=True)
    with pytest.raises(ExternalSetError) as error:
        check_folder(ExternalSet(name="isic", path=folder), 2)
    message = str(error.value)
    assert "evaluate.external_sets[2].path (isic)" in message and str(folder) in message
    assert ("is not a directory" if problem == "missing" else "holds no file") in message
