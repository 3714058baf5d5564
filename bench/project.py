"""A working copy of the project's pipeline in another directory, with some params changed.

The benchmark runs `dvc repro` in such a copy, so it never touches the project's own data,
models or MLflow store; the pipeline tests use it the same way on tiny data.
"""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from melanoma.config import PARAMS_FILE, load_params

PROJECT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore")
PIPELINE_PACKAGES = ("stages", "melanoma")
VENV_BIN = Path(sys.executable).parent  # the venv's dvc and python run the stages


def command_env(**extra: str) -> dict[str, str]:
    """The environment for commands run in a copy: this venv first on PATH, no DVC analytics."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",  # no network here: don't let dvc try to report usage
        **extra,
    }


def copy_project(destination: Path, overrides: Mapping[str, object] | None = None) -> Path:
    """Copy dvc.yaml, params.yaml, the ignore files and the pipeline code into `destination`
    (which must not exist), make it a git + DVC repository with the project's DVC config, apply
    `overrides` (see `override_params`) and return `destination`.

    Nothing of data/, models/ or mlruns/ is copied, and nothing is committed.
    """
    destination.mkdir(parents=True)
    for name in PIPELINE_FILES:
        if (PROJECT / name).is_file():
            shutil.copy(PROJECT / name, destination / name)
    for package in PIPELINE_PACKAGES:
        shutil.copytree(
            PROJECT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=destination, env=command_env(), check=True, capture_output=True)
    shutil.copy(PROJECT / ".dvc" / "config", destination / ".dvc" / "config")
    if overrides:
        override_params(destination / PARAMS_FILE, overrides)
    return destination


def override_params(path: Path, overrides: Mapping[str, object]) -> dict:
    """Set params named by dotted keys, as `dvc exp run -S` names them ("train.epochs": 1), in
    the params file at `path`; return the new params.

    Raises KeyError for a key the file does not have: a typo must not add a param silently.
    """
    raw = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *sections, name = dotted.split(".")
        section = raw
        for part in sections:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or name not in section:
            raise KeyError(f"{path} has no param {dotted}")
        section[name] = value
    if "data.sources" in overrides and "train.source_weights" not in overrides:
        keep_weights_of_sources(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def keep_weights_of_sources(raw: dict) -> None:
    """Drop from params (`raw`, as params.yaml reads) the train.source_weights of sources that
    data.sources no longer names: a copy that reads other sources keeps the weights of those it
    still reads (a weight naming a source params do not read is an error)."""
    names = {source["name"] for source in raw["data"]["sources"]}
    weights = raw["train"].get("source_weights") or {}
    raw["train"]["source_weights"] = {k: v for k, v in weights.items() if k in names}


SOURCE_DEP = re.compile(r"^\s*- \$\{data\.sources\[(\d+)\]\.path\}\s*$")


def pin_source_deps(dvc_yaml: Path, sources: int) -> None:
    """Make the ingest stage of the dvc.yaml at `dvc_yaml` depend on exactly the first `sources`
    entries of data.sources: one `${data.sources[i].path}` line each (DVC cannot expand a list
    into deps, so dvc.yaml names each source by its index)."""
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    places = [i for i, line in enumerate(lines) if SOURCE_DEP.match(line)]
    if not places:
        raise ValueError(f"{dvc_yaml}: no `- ${{data.sources[i].path}}` dependency to adjust")
    indent = lines[places[0]][: len(lines[places[0]]) - len(lines[places[0]].lstrip())]
    wanted = [f"{indent}- ${{data.sources[{i}].path}}\n" for i in range(sources)]
    lines[places[0] : places[-1] + 1] = wanted
    dvc_yaml.write_text("".join(lines))


def project_reference_labels() -> dict[str, str]:
    """validate.reference_labels of the project as an absolute path: relative to the project,
    it would point nowhere from the copy. Empty if the check is off."""
    reference = load_params(PROJECT / PARAMS_FILE).validate_.reference_labels
    if reference is None:
        return {}
    return {"validate.reference_labels": str((PROJECT / reference).resolve())}


def project_external_set(name: str) -> Path:
    """The folder of the project's external set `name` (params.yaml evaluate.external_sets) as
    an absolute path, which reads the same from a copy of the pipeline."""
    sets = load_params(PROJECT / PARAMS_FILE).evaluate.external_sets
    return next((PROJECT / external.path).resolve() for external in sets if external.name == name)
