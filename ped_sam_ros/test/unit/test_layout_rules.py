"""Rules the package layout keeps, checked on the source tree (docs/architecture.md explains them).

* Only the command-line entry points (``ped_sam_ros/tools``) import from ``ped_sam_ros.tools``.
* No two classes in ``ped_sam_ros`` and ``remote_node`` share a name (one name per idea).

Each failure names the offending modules or classes.  What importing the core and the server
loads is checked in a fresh interpreter: test/integration/test_fresh_imports.py.
"""

import ast
import functools
from collections import defaultdict
from pathlib import Path

from helpers import PKG_DIR

PACKAGE_DIR = PKG_DIR / "ped_sam_ros"
SERVER_DIR = PKG_DIR / "remote_node"
TOOLS_DIR = PACKAGE_DIR / "tools"


@functools.cache
def _tree(path: Path) -> ast.AST:
    """A file's syntax tree, parsed once for all the scans of this module."""
    return ast.parse(path.read_text(), str(path))


def _modules(*roots: Path):
    """(dotted module name, path, parsed tree) for every .py file under the roots."""
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).with_suffix("")
            parts = list(rel.parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            yield ".".join(parts), is_package, path, _tree(path)


def _imported_modules(module: str, is_package: bool, tree: ast.AST):
    """Absolute names of the modules a file imports from (relative imports resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from ped_sam_ros import tools``
                yield node.lineno, f"{target}.{alias.name}"


def test_only_entry_points_import_from_tools():
    offenders = []
    for module, is_package, path, tree in _modules(PACKAGE_DIR, SERVER_DIR, PKG_DIR / "launch"):
        if path.is_relative_to(TOOLS_DIR):
            continue
        for line, target in _imported_modules(module, is_package, tree):
            if target == "ped_sam_ros.tools" or target.startswith("ped_sam_ros.tools."):
                offenders.append(f"{path.relative_to(PKG_DIR)}:{line} imports {target}")
    assert not offenders, "only ped_sam_ros/tools may import from ped_sam_ros.tools:\n" + "\n".join(offenders)


def test_the_import_scan_sees_relative_and_absolute_imports():
    """The scan above can fail: it resolves the import forms a module could use."""
    tree = ast.parse("import ped_sam_ros.tools.demo\nfrom ..tools import demo\nfrom .. import tools\n")
    found = {t for _, t in _imported_modules("ped_sam_ros.eval.runner", False, tree)}
    assert {"ped_sam_ros.tools.demo", "ped_sam_ros.tools"} <= found
    tree = ast.parse("from .tools import demo\n")
    assert "ped_sam_ros.tools" in {t for _, t in _imported_modules("ped_sam_ros", True, tree)}


def test_no_two_classes_share_a_name():
    where = defaultdict(list)
    for module, _, _, tree in _modules(PACKAGE_DIR, SERVER_DIR):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(f"{module}:{node.lineno}")
    assert len(where) > 20, "the scan found too few classes to be looking at the package"
    clashes = {name: places for name, places in where.items() if len(places) > 1}
    assert not clashes, "class names defined more than once:\n" + "\n".join(
        f"{name}: {', '.join(places)}" for name, places in sorted(clashes.items())
    )
