"""dvc.yaml against the code: each stage depends on every project module it runs, and every
pipeline path of melanoma/paths.py is a dep or an out of some stage."""

import ast
from pathlib import Path

import pytest
import yaml

from melanoma import paths

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("melanoma", "stages")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py); None outside the
    project, or for a name that is no module (`b` of `from a import b`)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def imported_modules(file: Path) -> set[str]:
    """Dotted names of everything `file` imports, at any depth of its code; `from a import b`
    gives a.b as well as a, since b may be a module."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def runs_code(file: Path) -> bool:
    """False for a package __init__.py that holds only its docstring."""
    body = ast.parse(file.read_text()).body
    return not all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )


def import_closure(stage_module: str) -> set[Path]:
    """The project files that `python -m <stage_module>` executes, relative to the root."""
    seen: set[Path] = set()
    pending = [stage_module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            file = module_file(".".join(parts[:depth]))
            if file is None or file in seen:
                continue
            seen.add(file)
            pending.extend(imported_modules(file))
    return {file.relative_to(ROOT) for file in seen if runs_code(file)}


def covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(dep) or Path(dep) in file.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(stage):
    definition = STAGES[stage]
    module = definition["cmd"].removeprefix("python -m ")
    closure = import_closure(module)

    missing = sorted(str(f) for f in closure if not covered(f, definition["deps"]))

    assert Path("stages", f"{stage}.py") in closure
    assert not missing, f"dvc.yaml: stage {stage} runs {missing} but does not depend on them"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_code_dependency_exists(stage):
    code = [d for d in STAGES[stage]["deps"] if d.startswith(PROJECT_PACKAGES)]
    assert [d for d in code if not (ROOT / d).exists()] == []


def test_the_closure_follows_imports_and_skips_docstring_only_packages():
    closure = import_closure("stages.features")
    assert Path("melanoma/paths.py") in closure  # imported by the stage itself
    assert Path("melanoma/labels.py") in closure  # imported by melanoma/config.py, a level down
    assert Path("melanoma/evaluation/report.py") not in closure
    assert Path("melanoma/__init__.py") not in closure


def test_every_pipeline_path_is_in_dvc_yaml():
    named = set()
    for definition in STAGES.values():
        for field in ("deps", "outs", "metrics", "plots"):
            for entry in definition.get(field, []):
                named.add(entry if isinstance(entry, str) else next(iter(entry)))
    pipeline_paths = {
        name: value.as_posix() for name, value in vars(paths).items() if isinstance(value, Path)
    }

    def in_dvc_yaml(path: str) -> bool:
        return any(path == entry or path.startswith(f"{entry}/") for entry in named)

    assert {n: p for n, p in pipeline_paths.items() if not in_dvc_yaml(p)} == {}


def test_ingest_depends_on_the_folder_of_every_source_of_the_params():
    # DVC cannot expand a list into deps: dvc.yaml names each source by its index, and a
    # source added to params.yaml without its line would not re-run ingest when it changes.
    deps = STAGES["ingest"]["deps"]
    sources = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["sources"]
    assert [d for d in deps if d.startswith("${data.sources")] == [
        f"${{data.sources[{i}].path}}" for i in range(len(sources))
    ]
