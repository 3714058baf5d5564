"""`dvc repro validate` (ingest, then validate) in a fresh copy of the project on a tiny source."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from melanoma.manifest import VALIDATED_COLUMNS, read_manifest

PROJECT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the venv's dvc and python run the stages


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env["DVC_NO_ANALYTICS"] = "1"  # no network here: don't let dvc try to report usage
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding a copy of the project's pipeline code and params."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, root / name)
    for package in ("stages", "melanoma"):
        shutil.copytree(
            PROJECT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    return root


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
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    params["validate"].update(
        min_width=16, min_height=16, min_images_per_class={"train": 2, "test": 1}
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

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
