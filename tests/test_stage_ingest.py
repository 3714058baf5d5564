import logging
from pathlib import Path

import pytest
import yaml

from bench.project import keep_weights_of_sources
from melanoma.data.manifest import INGEST_COLUMNS, read_manifest
from stages import ingest as stage

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A scratch project root whose params.yaml is the real one with one `folders` source."""

    def with_source(source: Path) -> Path:
        params = yaml.safe_load(PROJECT_PARAMS.read_text())
        params["data"]["sources"] = [{"name": "isic", "kind": "folders", "path": str(source)}]
        keep_weights_of_sources(params)
        root = tmp_path / "project"
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.chdir(root)
        return root

    return with_source


def test_stage_writes_the_manifest_and_logs_the_counts(project, isic_source, caplog) -> None:
    root = project(isic_source(extra={"README.md": b"hello\n"}))
    with caplog.at_level(logging.INFO):
        stage.main()
    manifest = read_manifest(root / "data/ingested/manifest.csv", INGEST_COLUMNS)
    assert len(manifest) == 28
    assert "28 source files: 27 accepted, 1 rejected" in caplog.text
    assert "rejected outside_class_folder: 1 (e.g. README.md)" in caplog.text


def test_stage_stops_with_exit_code_1_and_names_the_source(project, tmp_path, caplog) -> None:
    missing = tmp_path / "isic-download"
    project(missing)
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(missing) in errors[0].getMessage()
    assert "data.sources[0].path (isic)" in errors[0].getMessage()
    assert errors[0].exc_info is None  # a message, not a traceback
