"""Executables and launch/config files in built install trees, found the way ROS tools find them.

Layouts:

* ``wheel``: ``pip install --prefix P`` of the package (what a plain ``pip install`` gives);
* ``colcon-like``: setup.py run with exactly the arguments colcon's ament_python build uses
  (copied from colcon-core's ``PythonBuildTask``), so setup.cfg's ``install_scripts`` applies;
* ``colcon``: the real ``colcon build`` of the workspace, where colcon is on PATH (colcon-core
  requires setuptools<80 and the project pins 84.2.1 for torch, so it is not in the venv);
* ``setup venv``: the venv these tests run in, when ``scripts/setup.sh`` made it.

For each: the ament index finds the package at the layout's prefix; ``ros2 launch``'s walk of
``share/ped_sam_ros`` (directory symlinks not followed) finds each launch file exactly once;
every console script is an executable in ``lib/ped_sam_ros/``; both launch files, evaluated
from the install tree, name only executables and files that exist there; one installed
executable runs. Where ``ros2launch``/``launch_ros`` are importable, their own functions
resolve the same names and evaluate the installed launch files (else that part skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

from helpers import PKG_DIR, WORKSPACE
from helpers.launch import (
    LAUNCH_FILES,
    PACKAGE,
    console_scripts,
    directory_symlinks,
    evaluate_launch_file,
    libexec_executable,
    package_prefix,
    share_file,
)

BUILD_TIMEOUT_S = 300
#: what setup.py installs into share/ped_sam_ros (the setup venv must show the same)
SHARE_GLOBS = ("package.xml", "launch/*.launch.py", "config/*.yaml", "config/*.xml")


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def _source_copy(dest: Path) -> Path:
    """The package without tests and build leftovers (builds never write into the work tree)."""
    ignore = shutil.ignore_patterns("test", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(PKG_DIR, dest, ignore=ignore)
    return dest


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, **kw)
    assert p.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    )
    return p


@pytest.fixture(scope="module")
def wheel_prefix(tmp_path_factory) -> Path:
    """``pip install --prefix``: a wheel build and install, as a user's ``pip install`` does."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    prefix = tmp / "prefix"
    ours = Path(sys.prefix) / "bin" / "edge_node"
    had_ours = ours.exists()
    # --ignore-installed: without it pip first UNINSTALLS the ped_sam_ros of the running venv
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--ignore-installed",
            "--prefix",
            str(prefix),
            str(src),
        ],
        env=dict(os.environ, PIP_NO_INPUT="1"),
    )
    assert ours.exists() == had_ours, "pip install --prefix touched the running venv's ped_sam_ros"
    return prefix


@pytest.fixture(scope="module")
def colcon_like_prefix(tmp_path_factory) -> Path:
    """setup.py as colcon-core's ament_python build runs it (``--prefix`` instead of its sitecustomize)."""
    tmp = tmp_path_factory.mktemp("colcon_like")
    src = _source_copy(tmp / "src")
    build, prefix = tmp / "build", tmp / "install"
    build.mkdir()
    cmd = [
        sys.executable,
        "-W",
        "ignore",
        "setup.py",
        "egg_info",
        "--egg-base",
        str(build),
        "build",
        "--build-base",
        str(build / "build"),
        "install",
        "--record",
        str(build / "install.log"),
        "--prefix",
        str(prefix),
        "--install-scripts",
        "$base/lib/ped_sam_ros",  # colcon passes setup.cfg's value explicitly
        "--single-version-externally-managed",
        "install_data",
    ]
    _run(cmd, cwd=src)
    return prefix


def _check_layout(prefix: Path, pythonpath: str = "") -> None:
    """Everything ``ros2 launch ped_sam_ros edge.launch.py`` / ``remotes.launch.py`` and
    ``ros2 run ped_sam_ros <exe>`` need, resolved as they resolve it."""
    assert package_prefix(PACKAGE, [prefix]) == prefix
    share = prefix / "share" / PACKAGE
    assert not directory_symlinks(share), "ros2launch's os.walk would not look inside these"
    for name in LAUNCH_FILES:
        share_file(prefix, name)
    exes = console_scripts()
    assert "edge_node" in exes and "ped-sam-remote" in exes
    for exe in exes:
        assert os.access(libexec_executable(prefix, exe), os.X_OK), exe

    def share_dir(pkg):
        return str(package_prefix(pkg, [prefix]) / "share" / pkg)

    def exec_in_pkg(exe, pkg):
        return str(libexec_executable(package_prefix(pkg, [prefix]), exe, pkg))

    edge = evaluate_launch_file(share_file(prefix, "edge.launch.py"), share_dir, exec_in_pkg)
    (node,) = edge.nodes
    libexec_executable(prefix, node.kwargs["executable"], node.kwargs["package"])
    for params in node.kwargs["parameters"]:
        assert Path(params).is_file() and Path(params).is_relative_to(share)
    profile = node.kwargs["additional_env"]["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert Path(profile).is_file() and Path(profile).is_relative_to(share)
    for choice in ("large_images_loopback", "none"):
        evaluate_launch_file(share_file(prefix, "edge.launch.py"), share_dir, exec_in_pkg, {"fastdds_profile": choice})
    assert Path(edge.defaults["params_file"]).is_relative_to(share)

    remotes = evaluate_launch_file(share_file(prefix, "remotes.launch.py"), share_dir, exec_in_pkg)
    assert Path(remotes.defaults["remotes_file"]).is_file() and Path(remotes.defaults["remotes_file"]).is_relative_to(
        share
    )
    assert len(remotes.processes) == 4
    for cmd in remotes.processes:
        assert Path(cmd[0]) == libexec_executable(prefix, "ped-sam-remote")

    # the installed server entry point really starts (its --help needs no model)
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = _run([str(libexec_executable(prefix, "ped-sam-remote")), "--help"], env=env).stdout
    assert out.startswith("usage: ped-sam-remote")


def _real_ros_tools_resolve(prefix: Path, pythonpath: str = "") -> dict:
    """ros2launch's and launch_ros's own lookups, and the installed launch files evaluated by
    the real launch API (OpaqueFunctions included), in a subprocess with the layout's index."""
    script = textwrap.dedent(f"""
        import importlib.util, json
        from launch import LaunchContext
        from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
        from launch.utilities import perform_substitutions
        from launch_ros.actions import Node
        from launch_ros.substitutions import ExecutableInPackage
        from ros2launch.api import get_share_file_path_from_package
        pkg = {PACKAGE!r}
        out = {{"launch": {{}}, "exe": {{}}, "starts": {{}}}}
        ctx = LaunchContext()
        for exe in {console_scripts()!r}:
            out["exe"][exe] = ExecutableInPackage(executable=exe, package=pkg).perform(ctx)
        for name in {list(LAUNCH_FILES)!r}:
            path = get_share_file_path_from_package(package_name=pkg, file_name=name)
            out["launch"][name] = path
            spec = importlib.util.spec_from_file_location(name.replace(".", "_"), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            ctx = LaunchContext()
            starts = out["starts"][name] = []
            for e in module.generate_launch_description().entities:
                if isinstance(e, DeclareLaunchArgument):
                    e.execute(ctx)
                elif isinstance(e, OpaqueFunction):
                    for a in e.execute(ctx) or []:
                        if isinstance(a, Node):
                            starts.append(ExecutableInPackage(a.node_executable, a.node_package).perform(ctx))
                        elif isinstance(a, ExecuteProcess):
                            starts.append(perform_substitutions(ctx, a.cmd[0]))
        print(json.dumps(out))
    """)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = _run([sys.executable, "-c", script], env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _check_with_real_tools(prefix: Path, pythonpath: str = "") -> None:
    if not (find_spec("ros2launch") and find_spec("launch_ros")):
        pytest.skip(
            "ros2launch/launch_ros are not installed (not on PyPI): resolved above with this test's own "
            "implementation of their lookups (ament index, os.walk of share/, lib/<pkg>/) instead"
        )
    real = _real_ros_tools_resolve(prefix, pythonpath)
    for name, path in real["launch"].items():
        assert Path(path) == share_file(prefix, name)
    for exe, path in real["exe"].items():
        assert Path(path) == libexec_executable(prefix, exe)
    assert real["starts"]["edge.launch.py"] == [str(libexec_executable(prefix, "edge_node"))]
    assert set(real["starts"]["remotes.launch.py"]) == {str(libexec_executable(prefix, "ped-sam-remote"))}


# ------------------------------------------------------------------------------------------ wheel


def test_wheel_install_layout(wheel_prefix):
    _check_layout(wheel_prefix, str(_site_packages(wheel_prefix)))
    # lib/ped_sam_ros/<exe> forwards to the console script pip wrote into bin/
    assert (wheel_prefix / "bin" / "edge_node").is_file()


def test_wheel_install_layout_with_real_ros_tools(wheel_prefix):
    _check_with_real_tools(wheel_prefix, str(_site_packages(wheel_prefix)))


# ------------------------------------------------------------------------------------ colcon-like


def test_colcon_like_install_layout(colcon_like_prefix):
    _check_layout(colcon_like_prefix, str(_site_packages(colcon_like_prefix)))
    # setup.cfg's install_scripts: the console scripts themselves, no forwarders and no bin/
    edge = libexec_executable(colcon_like_prefix, "edge_node").read_text()
    assert edge.startswith("#!") and "forwards there" not in edge
    assert not (colcon_like_prefix / "bin").exists()


def test_colcon_like_install_layout_with_real_ros_tools(colcon_like_prefix):
    _check_with_real_tools(colcon_like_prefix, str(_site_packages(colcon_like_prefix)))


# ----------------------------------------------------------------------------------------- colcon


@pytest.mark.parametrize("symlink", [False, True], ids=["copy", "symlink-install"])
def test_colcon_build_layout(tmp_path, symlink):
    colcon = shutil.which("colcon")
    if colcon is None:
        pytest.skip(
            "colcon is not installed here (colcon-core requires setuptools<80; the project pins 84.2.1 "
            "for torch): the colcon-like layout above runs setup.py exactly as colcon does"
        )
    listed = _run([colcon, "list", "--names-only", "--base-paths", str(WORKSPACE)], cwd=tmp_path).stdout.split()
    assert sorted(listed) == ["ped_sam_msgs", "ped_sam_ros"]  # both found from the workspace root
    # ped_sam_ros alone: ped_sam_msgs comes from the underlay (AMENT_PREFIX_PATH), so no cmake build here
    ws = tmp_path / "ws"
    _source_copy(ws / "src" / "ped_sam_ros")
    cmd = [
        colcon,
        "build",
        "--base-paths",
        str(ws / "src"),
        "--build-base",
        str(ws / "build"),
        "--install-base",
        str(ws / "install"),
    ]
    _run(cmd + (["--symlink-install"] if symlink else []), cwd=ws)
    prefix = ws / "install" / PACKAGE
    _check_layout(prefix, str(_site_packages(prefix)) + (os.pathsep + str(ws / "build" / PACKAGE) if symlink else ""))


# ------------------------------------------------------------------------------------- setup venv


def _setup_venv() -> Path:
    prefix = Path(sys.prefix)
    if not (prefix / ".ped_sam_stamps").is_dir():
        pytest.skip(f"{prefix} was not made by scripts/setup.sh")
    return prefix


def test_setup_venv_layout():
    prefix = _setup_venv()
    _check_layout(prefix)
    # the same files as a wheel installs (setup.sh lays them out itself: editable installs skip them)
    share = prefix / "share" / PACKAGE
    installed = sorted(str(p.relative_to(share)) for p in share.rglob("*") if p.is_file())
    expected = sorted(str(p.relative_to(PKG_DIR)) for g in SHARE_GLOBS for p in PKG_DIR.glob(g))
    assert installed == expected


def test_setup_venv_layout_with_real_ros_tools():
    _check_with_real_tools(_setup_venv())
