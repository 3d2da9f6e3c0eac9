"""The launch files, without ``launch``/``launch_ros`` (not installable here).

Always: they parse, declare the documented arguments, and name executables and
config files that exist. Then they are evaluated against small recording
stand-ins of the launch API (what the Node and the server processes would get).
Where ``launch_ros`` is importable (a real ROS install) ``generate_launch_description()``
is also evaluated for real.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

from helpers import PKG_DIR as REPO
LAUNCH = REPO / "launch"
EDGE, REMOTES = LAUNCH / "edge.launch.py", LAUNCH / "remotes.launch.py"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and ((isinstance(n.func, ast.Name) and n.func.id == name)
                 or (isinstance(n.func, ast.Attribute) and n.func.attr == name))]


def _declared(tree):
    return [c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")]


def _console_scripts():
    tree = _tree(REPO / "setup.py")
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "=" in node.value and ":" in node.value:
            scripts.add(node.value.split("=")[0].strip())
    return scripts


def _strings(tree):
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_launch_files_parse_and_define_generate_launch_description():
    for path in (EDGE, REMOTES):
        tree = _tree(path)
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in funcs, path.name


def test_edge_launch_arguments_executable_and_config():
    tree = _tree(EDGE)
    declared = _declared(tree)
    assert {"namespace", "image_topic", "params_file", "log_level"} <= set(declared)
    assert len(declared) == len(set(declared))
    nodes = _calls(tree, "Node")
    assert len(nodes) == 1
    kw = {k.arg: k.value for k in nodes[0].keywords}
    assert kw["package"].value == "ped_sam_ros"
    assert kw["executable"].value in _console_scripts()
    assert kw["name"].value == "edge_node"
    assert isinstance(kw["parameters"], ast.List) and "remappings" in kw and "namespace" in kw
    # every LaunchConfiguration used is declared
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
    assert used <= set(declared)
    # the config file it defaults to exists and is installed by setup.py
    assert "edge.yaml" in _strings(tree) and (REPO / "config" / "edge.yaml").is_file()
    assert "config/*.yaml" in (REPO / "setup.py").read_text()


def test_remotes_launch_arguments_executable_and_config():
    tree = _tree(REMOTES)
    declared = set(_declared(tree))
    assert {"remotes_file", "count", "base_port", "model", "checkpoint", "seed", "log_level"} <= declared
    assert "ped-sam-remote" in _strings(tree) and "ped-sam-remote" in _console_scripts()
    assert "remotes.yaml" in _strings(tree) and (REPO / "config" / "remotes.yaml").is_file()
    assert _calls(tree, "ExecuteProcess") and _calls(tree, "OpaqueFunction")
    overrides = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "OVERRIDES")
    assert {e.value for e in overrides.value.elts} <= declared


# ------------------------------------------------------------------ recording stand-ins of the launch API


class _Rec:
    """Records its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Rec):
    def perform(self, context):
        return context[self.args[0]]


def _stub_modules(share: Path):
    mods = {}

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        mods[name] = m
        return m

    classes = {n: type(n, (_Rec,), {}) for n in ("LaunchDescription", "DeclareLaunchArgument", "ExecuteProcess",
                                                   "OpaqueFunction", "SetEnvironmentVariable", "LaunchConfigurationNotEquals",
                                                   "Node")}
    mod("launch", LaunchDescription=classes["LaunchDescription"])
    mod("launch.actions", **{n: classes[n] for n in ("DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction",
                                                    "SetEnvironmentVariable")})
    mod("launch.conditions", LaunchConfigurationNotEquals=classes["LaunchConfigurationNotEquals"])
    mod("launch.substitutions", LaunchConfiguration=_LaunchConfiguration)
    mod("launch_ros")
    mod("launch_ros.actions", Node=classes["Node"])
    mod("ament_index_python")
    mod("ament_index_python.packages", get_package_share_directory=lambda pkg: str(share))
    return mods


def _evaluate_with_stubs(path: Path, monkeypatch):
    for name, m in _stub_modules(REPO).items():
        monkeypatch.setitem(sys.modules, name, m)
    spec = importlib.util.spec_from_file_location(f"launch_under_test_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    entities = ld.args[0]
    defaults = {e.args[0]: e.kwargs.get("default_value", "") for e in entities
                if type(e).__name__ == "DeclareLaunchArgument"}
    return entities, defaults


def test_edge_launch_evaluates_to_a_node_with_params_file_and_remaps(monkeypatch):
    entities, defaults = _evaluate_with_stubs(EDGE, monkeypatch)
    node = next(e for e in entities if type(e).__name__ == "Node")
    assert defaults["params_file"] == str(REPO / "config" / "edge.yaml")  # share dir -> config/edge.yaml
    assert Path(defaults["params_file"]).is_file()
    (param,) = node.kwargs["parameters"]
    assert param.args == ("params_file",)
    remaps = dict((src, dst) for src, dst in node.kwargs["remappings"])
    assert remaps["~/image"].args == ("image_topic",)
    assert node.kwargs["namespace"].args == ("namespace",)
    assert node.kwargs["arguments"][:2] == ["--ros-args", "--log-level"]
    assert Path(defaults["fastdds_profile"]).is_file()  # config/fastdds_large_images.xml
    env = next(e for e in entities if type(e).__name__ == "SetEnvironmentVariable")
    assert env.args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"


def test_remotes_launch_evaluates_to_server_processes(monkeypatch):
    entities, defaults = _evaluate_with_stubs(REMOTES, monkeypatch)
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    ctx = dict(defaults)
    procs = opaque.kwargs["function"](ctx)
    assert [p.kwargs["name"] for p in procs] == ["remote-a", "remote-b", "remote-c", "remote-d"]
    cmd = procs[0].kwargs["cmd"]
    assert cmd[0] == "ped-sam-remote" and cmd[cmd.index("--bind") + 1] == "tcp://127.0.0.1:5601"
    ctx.update(count="2", base_port="6000", checkpoint="/models/sam_vit_b_01ec64.pth")
    procs = opaque.kwargs["function"](ctx)
    cmds = [p.kwargs["cmd"] for p in procs]
    assert len(cmds) == 2 and cmds[1][cmds[1].index("--bind") + 1] == "tcp://127.0.0.1:6001"
    assert all("--checkpoint" in c and "--random-weights" not in c for c in cmds)
    # the command lines parse with the real server's argument parser
    from remote_node.__main__ import build_parser

    for c in cmds:
        build_parser().parse_args(c[1:])


def test_launch_files_evaluate_with_real_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI here; this check runs on a "
                                             "real ROS 2 install (the ast and stand-in checks above always run)")
    from launch import LaunchDescription

    for path in (EDGE, REMOTES):
        spec = importlib.util.spec_from_file_location(re.sub(r"\W", "_", path.name), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(module.generate_launch_description(), LaunchDescription)
