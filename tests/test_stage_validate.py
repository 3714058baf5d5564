import json
from pathlib import Path

import pytest
import yaml

from melanoma.manifest import INGEST_COLUMNS, VALIDATED_COLUMNS, read_manifest, write_manifest
from stages import validate as stage

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project dir, made the cwd; project(manifest, **validate_params) writes its inputs."""
    monkeypatch.chdir(tmp_path)

    def write(manifest, **validate_params):
        raw = yaml.safe_load(PARAMS_YAML.read_text())
        raw["validate"].update(min_images_per_class={"train": 2, "test": 1}, **validate_params)
        Path("params.yaml").write_text(yaml.safe_dump(raw))
        write_manifest(manifest, stage.INGESTED_MANIFEST, INGEST_COLUMNS)

    return write


def test_stage_writes_a_decision_for_every_row_and_the_report(project, ingest_manifest):
    manifest = ingest_manifest(
        extra=(
            dict(
                split="train", label="nevus", source_path="Train/nevus/A.jpg", pixel_sha256="a" * 64
            ),
            dict(
                split="train",
                label="nevus",
                source_path="Train/nevus/A(1).jpg",
                pixel_sha256="a" * 64,
            ),
            dict(
                split="",
                label="",
                source_path="Thumbs.db",
                status="rejected",
                reason="not_an_image",
            ),
        )
    )
    project(manifest)
    stage.main()

    validated = read_manifest(stage.VALIDATED_MANIFEST, VALIDATED_COLUMNS)
    assert sorted(validated["source_path"]) == sorted(manifest["source_path"])
    report = json.loads(stage.REPORT.read_text())
    assert report["success"] is True
    assert report["decisions"] == {"use": len(manifest) - 2, "drop": 2}
    assert report["removed"] == {"duplicate": 1, "ingest:not_an_image": 1}
    assert [len(d["files"]) for d in report["duplicates"]] == [2]
    assert report["class_counts"]["used"]["nevus"] == {"train": 3, "test": 1}
    assert all(
        {"name", "column", "success", "critical", "observed_value"} <= set(e)
        for e in report["expectations"]
    )
    assert (stage.DATA_DOCS / "index.html").is_file()


def test_critical_failure_exits_non_zero_after_writing_the_report(project, ingest_manifest, caplog):
    project(ingest_manifest(extra=(dict(split="test", label="freckle"),)))

    with pytest.raises(SystemExit) as exit_info:
        stage.main()

    assert exit_info.value.code == 1
    report = json.loads(stage.REPORT.read_text())
    assert report["success"] is False
    assert [f.split(" failed")[0] for f in report["failures"]] == [
        "manifest: labels within the nine"
    ]
    assert "labels within the nine" in caplog.text


def test_fail_policy_exits_non_zero_naming_the_files(project, ingest_manifest):
    project(
        ingest_manifest(
            extra=(
                dict(
                    split="train",
                    label="melanoma",
                    source_path="Train/m/X.jpg",
                    pixel_sha256="c" * 64,
                ),
                dict(
                    split="test",
                    label="melanoma",
                    source_path="Test/m/X.jpg",
                    pixel_sha256="c" * 64,
                ),
            )
        ),
        on_leak="fail",
    )

    with pytest.raises(SystemExit):
        stage.main()

    failures = json.loads(stage.REPORT.read_text())["failures"]
    assert failures == [
        "1 train/test leak case(s) and validate.on_leak is fail: Test/m/X.jpg = Train/m/X.jpg"
    ]
