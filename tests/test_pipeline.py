"""`dvc repro validate` (ingest, then validate) in a fresh copy of the project on a tiny source."""

import json
import subprocess
from pathlib import Path

import pytest

from bench.project import command_env, copy_project, override_params
from melanoma.manifest import VALIDATED_COLUMNS, read_manifest


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
    repo, isic_source, image_bytes
):
    planted = {
        # label conflict: the same picture filed under two labels
        "Train/melanoma/ISIC_0000100.jpg": image_bytes(100),
        "Train/seborrheic keratosis/ISIC_0000100.jpg": image_bytes(100),
        # leak: a test picture also in train
        "Test/nevus/ISIC_0000200.jpg": image_bytes(200),
        "Train/nevus/ISIC_0000200.jpg": image_bytes(200),
        # within-label duplicate
        "Train/nevus/ISIC_0000300.jpg": image_bytes(300),
        "Train/nevus/ISIC_0000300(1).jpg": image_bytes(300),
        "Train/nevus/.DS_Store": b"\x00\x00\x00\x01Bud1",
    }
    source = isic_source(extra=planted)
    override_params(
        repo / "params.yaml",
        {
            "data.source": str(source),
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
        "Train/melanoma/ISIC_0000100.jpg": "label_conflict",
        "Train/seborrheic keratosis/ISIC_0000100.jpg": "label_conflict",
        "Train/nevus/ISIC_0000200.jpg": "leak",
        "Train/nevus/ISIC_0000300.jpg": "duplicate",  # "(1)" sorts first: keep_first keeps it
        "Train/nevus/.DS_Store": dropped["Train/nevus/.DS_Store"],
    }
    assert dropped["Train/nevus/.DS_Store"].startswith("ingest:")
    report = json.loads((repo / "reports/validation.json").read_text())
    assert report["success"] is True
    assert (len(report["label_conflicts"]), len(report["leaks"]), len(report["duplicates"])) == (
        1,
        1,
        1,
    )
    assert (repo / "reports/data_docs/index.html").is_file()

    second = run(["dvc", "repro", "validate"], repo)

    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in run(["dvc", "status", "validate"], repo)
