"""`dvc repro validate` (ingest, then validate) in a fresh copy of the project on two tiny
sources."""

import io
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bench.project import command_env, copy_project, override_params, pin_source_deps
from melanoma.data.manifest import VALIDATED_COLUMNS, read_manifest
from tests.helpers import table_source_params, write_table_source

# End to end (a `dvc repro` or a server): `make test-fast` leaves it out; `make test` and CI
# run it.
pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=command_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding a copy of the project's pipeline code and params."""
    return copy_project(tmp_path / "repo")


def lesion_picture() -> Image.Image:
    """A smooth picture (dark blobs on skin colour) whose pHash survives resizing."""
    picture = Image.new("RGB", (200, 150), (220, 170, 150))
    draw = ImageDraw.Draw(picture)
    for x, y, r, colour in ((60, 50, 30, (60, 40, 30)), (130, 90, 40, (120, 70, 50))):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return picture


def encoded(picture: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def test_dvc_repro_accounts_for_every_file_and_then_has_nothing_to_do(
    repo, tmp_path, isic_source, image_bytes, reference_csv
):
    planted = {
        # label conflict: the same picture filed under two labels; ISIC says melanoma
        "Train/melanoma/ISIC_0000100.jpg": image_bytes(100),
        "Train/seborrheic keratosis/ISIC_0000100.jpg": image_bytes(100),
        # label conflict the reference does not know
        "Train/melanoma/ISIC_0000400.jpg": image_bytes(400),
        "Train/nevus/ISIC_0000400.jpg": image_bytes(400),
        # leak: a test picture also in train
        "Test/nevus/ISIC_0000200.jpg": image_bytes(200),
        "Train/nevus/ISIC_0000200.jpg": image_bytes(200),
        # within-label duplicate
        "Train/nevus/ISIC_0000300.jpg": image_bytes(300),
        "Train/nevus/ISIC_0000300(1).jpg": image_bytes(300),
        "Train/nevus/.DS_Store": b"\x00\x00\x00\x01Bud1",
        # the original of a copy in the table source
        "Train/melanoma/ISIC_0000500.png": encoded(lesion_picture(), "PNG"),
    }
    source = isic_source(extra=planted)
    # A second source in ISIC's table format with, per case:
    # - ISIC_0000002: a test image of the collection, at another size: one copy is kept;
    # - ISIC_0900001: another photograph of that test image's lesion: kept out of training;
    # - ISIC_0900002: a smaller, re-encoded copy of the collection's ISIC_0000500;
    # - ISIC_0900003: an unrelated image, used.
    small = lesion_picture().resize((120, 90))
    table = write_table_source(
        tmp_path / "ham",
        [
            {"lesion_id": "HAM_1", "image_id": "ISIC_0000002", "dx": "akiec"},
            {"lesion_id": "HAM_1", "image_id": "ISIC_0900001", "dx": "akiec"},
            {"lesion_id": "HAM_2", "image_id": "ISIC_0900002", "dx": "mel"},
            {"lesion_id": "HAM_3", "image_id": "ISIC_0900003", "dx": "nv"},
        ],
        {
            "ISIC_0000002.jpg": image_bytes(9002, (24, 18)),
            "ISIC_0900001.jpg": image_bytes(9001, (24, 18)),
            "ISIC_0900002.jpg": encoded(small, "JPEG"),
            "ISIC_0900003.jpg": image_bytes(9003, (24, 18)),
        },
    )
    # ISIC_0000003 is filed as basal cell carcinoma; ISIC calls it a dermatofibroma.
    reference = reference_csv(
        {"ISIC_0000100": "MEL", "ISIC_0000003_downsampled": "DF", "ISIC_0000004": "BCC"},
        name="truth.csv",
    )
    override_params(
        repo / "params.yaml",
        {
            "data.sources": [
                {"name": "isic_collection", "kind": "folders", "path": str(source)},
                table_source_params(table, name="ham10000"),
            ],
            "validate.reference_labels": str(reference),
            "validate.min_width": 16,
            "validate.min_height": 16,
            "validate.min_images_per_class": {"train": 2, "test": 1},
        },
    )
    pin_source_deps(repo / "dvc.yaml", 2)  # dvc.yaml names each default source by its index

    first = run(["dvc", "repro", "validate"], repo)

    assert "Running stage 'ingest'" in first and "Running stage 'validate'" in first
    everything = read_manifest(repo / "data/validated/manifest.csv", VALIDATED_COLUMNS)
    for name, location in (("isic_collection", source), ("ham10000", table)):
        files = sorted(
            p.relative_to(location).as_posix() for p in location.rglob("*") if p.is_file()
        )
        assert sorted(everything.loc[everything["source"] == name, "source_path"]) == files
    ham = everything[everything["source"] == "ham10000"].set_index("source_path")
    assert ham["decision_reason"].to_dict() == {
        "images/ISIC_0000002.jpg": "same_image_other_source",
        "images/ISIC_0900001.jpg": "same_group_as_test",
        "images/ISIC_0900002.jpg": "",
        "images/ISIC_0900003.jpg": "",
        "metadata.csv": "ingest:label_table",
    }
    validated = everything[everything["source"] == "isic_collection"]
    copy_group = validated.set_index("source_path").at["Train/melanoma/ISIC_0000500.png", "group"]
    assert ham.at["images/ISIC_0900002.jpg", "group"] == copy_group
    dropped = validated[validated["decision"] == "drop"].set_index("source_path")["decision_reason"]
    assert dropped.to_dict() == {
        "Train/seborrheic keratosis/ISIC_0000100.jpg": "label_conflict_by_reference",
        "Train/melanoma/ISIC_0000400.jpg": "label_conflict",
        "Train/nevus/ISIC_0000400.jpg": "label_conflict",
        "Train/nevus/ISIC_0000200.jpg": "leak",
        "Train/nevus/ISIC_0000300.jpg": "duplicate",  # "(1)" sorts first: keep_first keeps it
        "Train/nevus/.DS_Store": dropped["Train/nevus/.DS_Store"],
    }
    assert dropped["Train/nevus/.DS_Store"].startswith("ingest:")
    report = json.loads((repo / "reports/validation.json").read_text())
    assert report["success"] is True
    assert report["same_group_as_test"]["files"][0]["source_path"] == "images/ISIC_0900001.jpg"
    assert report["near_duplicates"]["count"] == 1
    assert report["sources"]["ham10000"]["removed"] == {
        "ingest:label_table": 1,
        "same_group_as_test": 1,
        "same_image_other_source": 1,
    }
    assert (len(report["label_conflicts"]), len(report["leaks"]), len(report["duplicates"])) == (
        2,
        1,
        1,
    )
    relabelled = validated.set_index("source_path").loc[
        "Train/basal cell carcinoma/ISIC_0000003.jpg"
    ]
    assert (relabelled["label"], relabelled["label_source"]) == ("dermatofibroma", "reference")
    assert report["reference_labels"]["images"]["disagrees"] == 2
    assert (repo / "reports/data_docs/index.html").is_file()

    second = run(["dvc", "repro", "validate"], repo)

    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in run(["dvc", "status", "validate"], repo)
    # The bytecode Python writes beside the modules a stage imported (where
    # PYTHONDONTWRITEBYTECODE is not set) is no change of a directory dependency.
    (repo / "melanoma" / "params" / "__pycache__").mkdir(exist_ok=True)
    (repo / "melanoma" / "params" / "__pycache__" / "data.cpython-311.pyc").write_bytes(b"\0")
    assert "Data and pipelines are up to date" in run(["dvc", "status", "validate"], repo)

    # The reference file is a dependency of validate: a change re-runs validate, not ingest.
    reference_csv({"ISIC_0000100": "MEL"}, name="truth.csv")
    third = run(["dvc", "repro", "validate"], repo)

    assert "Running stage 'validate'" in third and "Running stage 'ingest'" not in third
    report = json.loads((repo / "reports/validation.json").read_text())
    assert report["reference_labels"]["images"]["disagrees"] == 1
