"""The house's layers (docs/architecture.md): every import inside `melanoma/` points down the
layers or stays within its own, and nothing in `melanoma/` imports `stages/` or `bench/`.

The imports are read from the source (every `import`, at the top or inside a function), as
tests/test_dvc_yaml.py reads them for the stages' deps; one that points up fails naming both
files. The benchmark, on top, has no layers of its own, but its modules import each other one
way only: no circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first: a module may import its own layer and those before it.
LAYERS = (
    (
        "base",
        (
            "melanoma.labels",
            "melanoma.logs",
            "melanoma.errors",
            "melanoma.exit_codes",
            "melanoma.paths",
        ),
    ),
    ("params", ("melanoma.params", "melanoma.config")),
    ("reports", ("melanoma.reports", "melanoma.metrics", "melanoma.tracking")),
    ("data", ("melanoma.data",)),
    ("model", ("melanoma.model",)),
    ("inference", ("melanoma.inference",)),
    ("evaluation", ("melanoma.evaluation",)),
    ("sites", ("melanoma.sites",)),
    ("training", ("melanoma.training",)),
    ("registry", ("melanoma.registry",)),
    ("interfaces", ("melanoma.app", "melanoma.cli", "melanoma.site_commands")),
)
OUTSIDE_THE_PACKAGE = ("stages", "bench")


def layer_of(module: str) -> int | None:
    for place, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(f"{p}.") for p in prefixes):
            return place
    return None


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def package_files() -> list[Path]:
    return sorted((ROOT / "melanoma").rglob("*.py"))


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def upward_imports() -> set[tuple[str, str]]:
    upward = set()
    for path in package_files():
        here = layer_of(module_of(path))
        for module in imports(path):
            there = layer_of(module)
            if here is not None and there is not None and there > here:
                upward.add((path.relative_to(ROOT).as_posix(), module))
    return upward


def test_every_module_of_the_package_has_a_layer():
    unplaced = [module_of(p) for p in package_files() if layer_of(module_of(p)) is None]
    assert unplaced == ["melanoma"], f"give these a layer in LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    upward = sorted(upward_imports())
    assert not upward, "imports pointing up the layers (docs/architecture.md): " + "; ".join(
        f"{file} imports {module}" for file, module in upward
    )


def test_the_package_never_imports_the_stages_or_the_benchmark():
    reaching_out = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in package_files()
        for module in imports(path)
        if module.split(".")[0] in OUTSIDE_THE_PACKAGE
    ]
    assert not reaching_out, reaching_out


# Only the edge knows the pipeline's file layout: the stages, the command, the page (and bench/,
# tests/, outside the package); a logic module takes the paths it reads and writes as arguments.
KNOWS_THE_LAYOUT = ("melanoma/cli.py", "melanoma/site_commands.py", "melanoma/app/")


def imports_the_layout(path: Path) -> bool:
    return any(m == "melanoma.paths" for m in imports(path)) or any(
        isinstance(node, ast.ImportFrom)
        and node.module == "melanoma"
        and any(alias.name == "paths" for alias in node.names)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
    )


def test_only_the_edge_imports_the_pipeline_s_file_layout():
    reaching = sorted(
        path.relative_to(ROOT).as_posix() for path in package_files() if imports_the_layout(path)
    )
    logic = [f for f in reaching if not f.startswith(KNOWS_THE_LAYOUT)]
    assert not logic, (
        "logic modules importing melanoma.paths (pass the paths in from stages/ or the CLI, "
        f"docs/architecture.md): {logic}"
    )


def modules_imported(path: Path) -> set[str]:
    """`imports(path)`, where `from package import name` also names `package.name` (a module,
    or, harmlessly, a function or class of the package's)."""
    found = imports(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of modules each importing the next (the first repeated last), or None."""
    done: set[str] = set()

    def walk(path: list[str]) -> list[str] | None:
        for module in sorted(graph[path[-1]]):
            if module in path:
                return path[path.index(module) :] + [module]
            if module not in done:
                circle = walk([*path, module])
                if circle:
                    return circle
        done.add(path[-1])
        return None

    for module in sorted(graph):
        circle = None if module in done else walk([module])
        if circle:
            return circle
    return None


def test_import_circle_finds_modules_that_import_each_other():
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_the_benchmark_s_modules_import_each_other_one_way_only():
    files = {module_of(path): path for path in sorted((ROOT / "bench").glob("*.py"))}
    graph = {
        module: {name for name in modules_imported(path) if name in files and name != module}
        for module, path in files.items()
    }
    circle = import_circle(graph)
    assert circle is None, "bench/ imports in a circle (a function-level import counts): " + (
        " -> ".join(files[module].relative_to(ROOT).as_posix() for module in circle)
    )
