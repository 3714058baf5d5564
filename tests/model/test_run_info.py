import json

import pytest

from melanoma.model.run_info import RunInfoError, read_run_info


def test_run_info_must_come_from_train(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(RunInfoError, match="lacks"):
        read_run_info(path)
    with pytest.raises(RunInfoError, match="cannot be read"):
        read_run_info(tmp_path / "missing.json")
