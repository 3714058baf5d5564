"""models/run.json, written by the train stage: which MLflow run and logged model it made."""

import json
from pathlib import Path

RUN_INFO_KEYS = ("run_id", "model_uri", "image_size")


class RunInfoError(ValueError):
    """models/run.json is missing or was not written by the train stage."""


def read_run_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunInfoError(
            f"{path}: cannot be read as JSON ({error}); run the train stage"
        ) from None
    missing = [key for key in RUN_INFO_KEYS if key not in info]
    if missing:
        raise RunInfoError(f"{path} lacks {missing}: it was not written by the train stage")
    return info
