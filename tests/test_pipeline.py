"""`dvc repro validate` (ingest, then validate) in a fresh copy of the project on a tiny source."""

import json
import subprocess
from pathlib import Path

import pytest

from bench.project import command_env, copy_project, override_params
from melanoma.data.manifest import VALIDATED_COLUMNS, read_manifest

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


def test_dvc_repro_accounts_for_every_file_and_then_has_nothing_to_do(
    repo, isic_source, image_bytes, reference_csv
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
    }
    source = isic_source(extra=planted)
    # ISIC_0000003 is filed as basal cell carcinoma; ISIC calls it a dermatofibroma.
    reference = reference_csv(
        {"ISIC_0000100": "MEL", "ISIC_0000003_downsampled": "DF", "ISIC_0000004": "BCC"},
        name="truth.csv",
    )
    override_params(
        repo / "params.yaml",
        {
            "data.source": str(source),
            "validate.reference_labels": str(reference),
            "validate.min_width": 16,
            "validate.min_height": 16,
            "validate.min_images_per_class": {"train": 2, "test": 1},
        },
    )

    first = run(["dvc", "repro", "validate"], repo)

    assert "Running stage 'ingest'" in first and "Running stage 'validate'" in first
    validated = read_manifest(repo / "data/validated/manifest.csv", VALIDATED_COLUMNS)
    source_files = sorted(
        p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()
    )
    assert sorted(validated["source_path"]) == source_files
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

    # The reference file is a dependency of validate: a change re-runs validate, not ingest.
    reference_csv({"ISIC_0000100": "MEL"}, name="truth.csv")
    third = run(["dvc", "repro", "validate"], repo)

    assert "Running stage 'validate'" in third and "Running stage 'ingest'" not in third
    report = json.loads((repo / "reports/validation.json").read_text())
    assert report["reference_labels"]["images"]["disagrees"] == 1
