"""A fingerprint of what some modules do, not of how their files are laid out: a benchmark
result keyed on it stays valid when a function moves between those modules, a comment or a
docstring changes, or the code is reformatted, and is measured again when any statement does.
"""

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path


def _module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _without_docstrings(node: ast.AST) -> ast.AST:
    """`node` with the docstring of every function and class in it removed."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = [statement for statement in inner.body if not _is_docstring(statement)]
            inner.body = body or [ast.Pass()]
    return node


def _imports(node: ast.Import | ast.ImportFrom) -> list[str]:
    """One line per imported name, as it is bound: `module.name as binding`."""
    if isinstance(node, ast.Import):
        return [f"import {alias.name} as {alias.asname or alias.name}" for alias in node.names]
    module = "." * node.level + (node.module or "")
    return [f"from {module} import {a.name} as {a.asname or a.name}" for a in node.names]


def code_fingerprint(files: Iterable[Path], root: Path) -> str:
    """SHA-256 of the top-level statements of `files` (modules under `root`): every function,
    class and assignment as the parser reads it (no comments, no docstrings, no layout), and
    every import of a module outside `files` (an import between them only says where a
    definition lives), as a sorted set: neither the order of definitions, nor the file they are
    in, nor a statement every file repeats (`log = logging.getLogger(__name__)`) counts."""
    files = [Path(file) for file in files]
    modules = {_module_name(file, root) for file in files}
    statements: set[str] = set()
    for file in files:
        for node in ast.parse(file.read_text(), filename=str(file)).body:
            if _is_docstring(node):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                if isinstance(node, ast.ImportFrom) and node.module in modules:
                    continue
                statements.update(_imports(node))
                continue
            statements.add(ast.unparse(_without_docstrings(node)))
    return hashlib.sha256("\n\0".join(sorted(statements)).encode()).hexdigest()
