"""The augment, features and train stages end to end on the tiny project, against dvc.yaml's
declarations."""

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from melanoma.data.manifest import AUGMENTED_COLUMNS, read_manifest
from stages import augment, features, train

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def _declared_paths(stage: dict) -> list[Path]:
    entries = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries]


@pytest.mark.slow  # three stages, Lite0 features and a training
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


def test_train_stops_with_the_path_of_a_wrong_weights_file(tiny_project, tmp_path, caplog):
    fake = tmp_path / "efficientnet-lite0.pth"
    fake.write_bytes(b"not the weights")
    tiny_project["train"].update(architecture="efficientnet_lite0", pretrained_weights=str(fake))
    Path("params.yaml").write_text(yaml.safe_dump(tiny_project))
    augment.main()

    with pytest.raises(SystemExit) as stopped:
        train.main()
    assert stopped.value.code == 1
    assert f"{fake}: sha256 mismatch" in caplog.text
    assert not Path("models/model.keras").exists()
