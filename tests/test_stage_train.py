"""The augment, features and train stages end to end on the tiny project, against dvc.yaml's
declarations."""

import json
from pathlib import Path

import yaml
from mlflow import MlflowClient

from melanoma.manifest import AUGMENTED_COLUMNS, read_manifest
from stages import augment, features, train

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def _declared_paths(stage: dict) -> list[Path]:
    entries = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries]


def test_augment_features_then_train_write_every_declared_output(tiny_project):
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]

    augment.main()
    manifest = read_manifest(Path("data/augmented/manifest.csv"), AUGMENTED_COLUMNS)
    assert set(manifest["split"]) == {"train", "val", "test"}
    features.main()  # the default resnet trains end to end: only the (empty) key is written
    assert json.loads(Path("data/features/key.json").read_text()) is None
    train.main()

    declared = [_declared_paths(stages[name]) for name in ("augment", "features", "train")]
    for path in sum(declared, []):
        assert path.exists(), f"{path} is declared in dvc.yaml but was not written"
    run_info = json.loads(Path("models/run.json").read_text())
    run = MlflowClient(run_info["tracking_uri"]).get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(tiny_project["train"]["epochs"])
