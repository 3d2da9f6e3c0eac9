"""Launch files and install trees, checked the way ROS tools read them (no ``launch`` needed).

* :func:`console_scripts`: the executables setup.py declares;
* :func:`share_file`: ``ros2 launch PKG FILE``'s lookup: the package's share directory found
  through the ament index, walked with ``os.walk`` (directory symlinks are NOT followed);
* :func:`libexec_executable`: ``ros2 run`` / launch_ros ``ExecutableInPackage``'s lookup:
  ``<prefix>/lib/<package>/<name>``, executable;
* :func:`evaluate_launch_file`: runs ``generate_launch_description()`` and its
  ``OpaqueFunction`` parts against recording stand-ins of the launch API, with the package
  lookups above, and returns what would be started.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from helpers import PKG_DIR

PACKAGE = "ped_sam_ros"
LAUNCH_FILES = ("edge.launch.py", "remotes.launch.py")


def console_scripts() -> List[str]:
    """The console-script names of setup.py's ``CONSOLE_SCRIPTS``."""
    tree = ast.parse((PKG_DIR / "setup.py").read_text())
    node = next(
        n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CONSOLE_SCRIPTS"
    )
    return [e.split("=")[0].strip() for e in ast.literal_eval(node.value)]


def package_prefix(package: str, prefixes: List[Path]) -> Path:
    """ament_index_python's ``get_package_prefix``: the first prefix with the package's marker."""
    for p in prefixes:
        if (Path(p) / "share" / "ament_index" / "resource_index" / "packages" / package).is_file():
            return Path(p)
    raise LookupError(f"package {package!r} not found in the ament index of {[str(p) for p in prefixes]}")


def share_file(prefix: Path, name: str, package: str = PACKAGE) -> Path:
    """ros2launch's ``get_share_file_path_from_package``: exactly one ``name`` under share/<package>."""
    share = Path(prefix) / "share" / package
    found = [Path(root) / name for root, _dirs, files in os.walk(share) if name in files]
    if not found:
        raise FileNotFoundError(
            f"file {name!r} was not found in the share directory of package {package!r} which is at {str(share)!r}"
        )
    if len(found) > 1:
        raise LookupError(f"file {name!r} was found more than once under {share}: {found}")
    return found[0]


def libexec_executable(prefix: Path, name: str, package: str = PACKAGE) -> Path:
    """launch_ros's ``ExecutableInPackage`` (and ``ros2 run``): ``<prefix>/lib/<package>/<name>``."""
    libexec = Path(prefix) / "lib" / package
    if not libexec.exists():
        raise FileNotFoundError(
            f"package {package!r} found at {str(prefix)!r}, but libexec directory {str(libexec)!r} does not exist"
        )
    found = shutil.which(name, path=str(libexec))
    if found is None:
        raise FileNotFoundError(f"executable {name!r} not found on the libexec directory {str(libexec)!r}")
    return Path(found)


def directory_symlinks(root: Path) -> List[Path]:
    """Directory symlinks under ``root``: os.walk lists them but never looks inside."""
    return [Path(r) / d for r, dirs, _files in os.walk(root) for d in dirs if (Path(r) / d).is_symlink()]


# ------------------------------------------------------------------ recording stand-ins of the launch API


class Rec:
    """Records its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Rec):
    def perform(self, context):
        return context[self.args[0]]


def _performed(value, context):
    """A launch substitution (or a list of them, or a plain string) -> string."""
    if isinstance(value, (list, tuple)):
        return "".join(_performed(v, context) for v in value)
    return value.perform(context) if hasattr(value, "perform") else str(value)


def stub_modules(share_dir: Callable[[str], str], executable_in_package: Callable[[str, str], str]) -> Dict:
    """Modules standing in for launch, launch_ros and ament_index_python (``sys.modules`` entries)."""
    mods = {}

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        mods[name] = m
        return m

    class ExecutableInPackage(Rec):
        def perform(self, context):
            return executable_in_package(
                _performed(self.kwargs["executable"], context), _performed(self.kwargs["package"], context)
            )

    names = ("LaunchDescription", "DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction", "LogInfo", "Node")
    classes = {n: type(n, (Rec,), {}) for n in names}
    mod("launch", LaunchDescription=classes["LaunchDescription"])
    mod("launch.actions", **{n: classes[n] for n in names[1:5]})
    mod("launch.substitutions", LaunchConfiguration=LaunchConfiguration)
    mod("launch_ros")
    mod("launch_ros.actions", Node=classes["Node"])
    mod("launch_ros.substitutions", ExecutableInPackage=ExecutableInPackage)
    mod("ament_index_python")
    mod("ament_index_python.packages", get_package_share_directory=share_dir)
    return mods


@contextmanager
def stubbed_launch_api(share_dir: Callable[[str], str], executable_in_package: Callable[[str, str], str]) -> Iterator:
    """The stand-ins in ``sys.modules`` for the duration (whatever was there comes back)."""
    mods = stub_modules(share_dir, executable_in_package)
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name, m in saved.items():
            if m is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = m


@dataclass
class Evaluated:
    """What a launch file would start, with its arguments' defaults."""

    defaults: Dict[str, str]
    nodes: List[Rec] = field(default_factory=list)  # launch_ros Node stand-ins
    processes: List[List[str]] = field(default_factory=list)  # ExecuteProcess command lines, performed
    opaque: List[Callable] = field(default_factory=list)


def load_launch_module(path: Path, share_dir: Callable[[str], str], executable_in_package: Callable[[str, str], str]):
    with stubbed_launch_api(share_dir, executable_in_package):
        spec = importlib.util.spec_from_file_location(f"launch_under_test_{Path(path).name.replace('.', '_')}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def evaluate_launch_file(
    path: Path,
    share_dir: Callable[[str], str],
    executable_in_package: Callable[[str, str], str],
    overrides: Optional[Dict[str, str]] = None,
) -> Evaluated:
    """``generate_launch_description()`` and its OpaqueFunctions, with the defaults plus ``overrides``."""
    module = load_launch_module(path, share_dir, executable_in_package)
    with stubbed_launch_api(share_dir, executable_in_package):
        entities = module.generate_launch_description().args[0]
        defaults = {
            e.args[0]: e.kwargs.get("default_value", "")
            for e in entities
            if type(e).__name__ == "DeclareLaunchArgument"
        }
        out = Evaluated(defaults=defaults)
        context = dict(defaults, **(overrides or {}))
        todo = list(entities)
        while todo:
            e = todo.pop(0)
            kind = type(e).__name__
            if kind == "OpaqueFunction":
                out.opaque.append(e.kwargs["function"])
                todo.extend(e.kwargs["function"](context) or [])
            elif kind == "Node":
                out.nodes.append(e)
            elif kind == "ExecuteProcess":
                out.processes.append([_performed(a, context) for a in e.kwargs["cmd"]])
        return out
