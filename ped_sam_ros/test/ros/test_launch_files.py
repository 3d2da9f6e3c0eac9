"""The launch files, without ``launch``/``launch_ros`` (not installable here).

Always: they parse, declare the documented arguments with the same level names, use no
deprecated condition and set no environment for the whole launch, and name executables
and config files that exist. Then they are evaluated against small recording stand-ins of
the launch API (what the Node and the server processes would get), including their
``OpaqueFunction`` parts. Where ``launch_ros`` is importable (a real ROS install)
``generate_launch_description()`` is also evaluated for real. Whether the files and
executables are found in built install trees is ``test_install_layouts.py``'s job.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import PKG_DIR
from helpers.launch import evaluate_launch_file

LAUNCH = PKG_DIR / "launch"
CONFIG = PKG_DIR / "config"
EDGE, REMOTES = LAUNCH / "edge.launch.py", LAUNCH / "remotes.launch.py"
#: launch API names that are deprecated upstream (launch 3.x warns on every launch)
DEPRECATED = {"LaunchConfigurationEquals", "LaunchConfigurationNotEquals"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree, name):
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
    ]


def _declared(tree):
    return [c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")]


def _constant(tree, name):
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name)
    return ast.literal_eval(node.value)


def _console_scripts():
    return {e.split("=")[0].strip() for e in _constant(_tree(PKG_DIR / "setup.py"), "CONSOLE_SCRIPTS")}


def _strings(tree):
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _imported_names(tree):
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


def test_launch_files_parse_and_define_generate_launch_description():
    for path in (EDGE, REMOTES):
        tree = _tree(path)
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in funcs, path.name


def test_no_deprecated_conditions_and_no_launch_wide_environment():
    for path in (EDGE, REMOTES):
        tree = _tree(path)
        names = _imported_names(tree) | {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & DEPRECATED, f"{path.name} uses {names & DEPRECATED}"
        # an environment set for the launch leaks into every process of a parent launch
        assert not _calls(tree, "SetEnvironmentVariable"), path.name
    # the servers speak ZeroMQ only: no DDS settings at all
    assert not [s for s in _strings(_tree(REMOTES)) if "FASTDDS" in s]


def test_both_files_accept_the_same_log_levels():
    edge, remotes = _constant(_tree(EDGE), "LOG_LEVELS"), _constant(_tree(REMOTES), "LOG_LEVELS")
    assert edge == remotes == ["debug", "info", "warn", "error", "fatal"]
    for path in (EDGE, REMOTES):
        (decl,) = [c for c in _calls(_tree(path), "DeclareLaunchArgument") if c.args[0].value == "log_level"]
        kw = {k.arg: k.value for k in decl.keywords}
        assert isinstance(kw["choices"], ast.Name) and kw["choices"].id == "LOG_LEVELS", path.name


def test_edge_launch_arguments_executable_and_config():
    tree = _tree(EDGE)
    declared = _declared(tree)
    assert {"namespace", "image_topic", "params_file", "log_level", "fastdds_profile"} <= set(declared)
    assert len(declared) == len(set(declared))
    nodes = _calls(tree, "Node")
    assert len(nodes) == 1
    kw = {k.arg: k.value for k in nodes[0].keywords}
    assert kw["executable"].value in _console_scripts()
    assert kw["name"].value == "edge_node"
    assert isinstance(kw["parameters"], ast.List) and "remappings" in kw and "namespace" in kw
    assert "additional_env" in kw  # the DDS profile: this process only
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
    assert used <= set(declared)
    assert "edge.yaml" in _strings(tree) and (CONFIG / "edge.yaml").is_file()
    for name in _constant(tree, "FASTDDS_PROFILES").values():
        assert (CONFIG / name).is_file(), name
    assert (
        "config/*.yaml" in (PKG_DIR / "setup.py").read_text() and "config/*.xml" in (PKG_DIR / "setup.py").read_text()
    )


def test_remotes_launch_arguments_executable_and_config():
    tree = _tree(REMOTES)
    declared = set(_declared(tree))
    assert {"remotes_file", "count", "base_port", "model", "checkpoint", "seed", "log_level"} <= declared
    (exe,) = _calls(tree, "ExecutableInPackage")  # found where `ros2 run` looks, not on PATH
    kw = {k.arg: k.value for k in exe.keywords}
    assert kw["executable"].value in _console_scripts()
    assert "remotes.yaml" in _strings(tree) and (CONFIG / "remotes.yaml").is_file()
    assert _calls(tree, "ExecuteProcess") and _calls(tree, "OpaqueFunction")
    assert set(_constant(tree, "OVERRIDES")) <= declared


def _profile(path: Path):
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(path).getroot()
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", namespaces=ns) == "SHM"]
    udp = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", namespaces=ns) == "UDPv4"]
    allow = [i.get("name") for t in udp for i in t.iterfind(".//d:allowlist/d:interface", ns)]
    builtin = root.findtext(".//d:participant/d:rtps/d:useBuiltinTransports", namespaces=ns)
    return shm, udp, allow, builtin


def test_fastdds_profiles_large_shm_and_who_can_see_the_node():
    # default: reachable from other hosts (UDP on every interface)
    shm, udp, allow, builtin = _profile(CONFIG / "fastdds_large_images.xml")
    assert int(shm[0].findtext("{http://www.eprosima.com}segment_size")) >= 3 * 1024 * 1024  # a 1024x1024 rgb8
    assert udp and allow == [] and builtin == "false"
    # the explicit loopback option: UDP on 127.0.0.1 only and the built-ins off, so invisible elsewhere
    shm, udp, allow, builtin = _profile(CONFIG / "fastdds_large_images_loopback.xml")
    assert int(shm[0].findtext("{http://www.eprosima.com}segment_size")) >= 3 * 1024 * 1024
    assert allow == ["127.0.0.1"] and builtin == "false"


# ------------------------------------------------------------------ recording stand-ins of the launch API

FAKE_LIBEXEC = "/fake/prefix/lib"


def _evaluate_with_stubs(path: Path):
    """(the launch file's OpaqueFunction, its arguments' defaults), the package's share dir
    being this source tree and ``ExecutableInPackage`` giving ``/fake/prefix/lib/<pkg>/<exe>``."""
    ev = evaluate_launch_file(path, lambda pkg: str(PKG_DIR), lambda exe, pkg: f"{FAKE_LIBEXEC}/{pkg}/{exe}")
    (function,) = ev.opaque
    return function, ev.defaults


def _edge_node(function, ctx):
    entities = function(ctx)
    (node,) = [e for e in entities if type(e).__name__ == "Node"]
    return node


def test_edge_launch_evaluates_to_a_node_with_params_file_remaps_and_its_own_profile():
    function, defaults = _evaluate_with_stubs(EDGE)
    assert defaults["params_file"] == str(CONFIG / "edge.yaml")  # share dir -> config/edge.yaml
    node = _edge_node(function, dict(defaults))
    assert node.kwargs["parameters"] == [str(CONFIG / "edge.yaml")]
    remaps = dict(node.kwargs["remappings"])
    assert remaps["~/image"].args == ("image_topic",)
    assert node.kwargs["namespace"].args == ("namespace",)
    flag, level = node.kwargs["arguments"]
    assert flag == "--log-level" and level.args == ("log_level",)
    # default: the reachable large-image profile, for this process only
    assert defaults["fastdds_profile"] == "large_images"
    assert node.kwargs["additional_env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": str(CONFIG / "fastdds_large_images.xml")}
    loop = _edge_node(function, dict(defaults, fastdds_profile="large_images_loopback"))
    assert loop.kwargs["additional_env"]["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_large_images_loopback.xml")
    assert _edge_node(function, dict(defaults, fastdds_profile="none")).kwargs["additional_env"] == {}
    own = CONFIG / "fastdds_large_images_loopback.xml"
    assert _edge_node(function, dict(defaults, fastdds_profile=str(own))).kwargs["additional_env"] == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(own)
    }
    with pytest.raises(RuntimeError, match="fastdds_profile: 'tcp_only'"):
        function(dict(defaults, fastdds_profile="tcp_only"))


def test_edge_launch_names_a_missing_params_file(tmp_path):
    function, defaults = _evaluate_with_stubs(EDGE)
    missing = tmp_path / "no_such_edge.yaml"
    with pytest.raises(RuntimeError, match=re.escape(str(missing))):
        function(dict(defaults, params_file=str(missing)))


def test_remotes_launch_evaluates_to_server_processes():
    function, defaults = _evaluate_with_stubs(REMOTES)
    ctx = dict(defaults)
    procs = function(ctx)
    assert [p.kwargs["name"] for p in procs] == ["remote-a", "remote-b", "remote-c", "remote-d"]
    cmd = procs[0].kwargs["cmd"]
    assert cmd[0] == f"{FAKE_LIBEXEC}/ped_sam_ros/ped-sam-remote"  # ExecutableInPackage, not PATH
    assert cmd[cmd.index("--bind") + 1] == "tcp://127.0.0.1:5601"
    ctx.update(count="2", base_port="6000", checkpoint="/models/sam_vit_b_01ec64.pth")
    cmds = [p.kwargs["cmd"] for p in function(ctx)]
    assert len(cmds) == 2 and cmds[1][cmds[1].index("--bind") + 1] == "tcp://127.0.0.1:6001"
    assert all("--checkpoint" in c and "--random-weights" not in c for c in cmds)
    # every level name both files accept reaches the server as one its parser takes
    from remote_node.__main__ import build_parser

    for level in ("debug", "info", "warn", "error", "fatal"):
        for c in [p.kwargs["cmd"] for p in function(dict(ctx, log_level=level))]:
            parsed = build_parser().parse_args(c[1:])
            assert parsed.log_level == {"warn": "warning", "fatal": "error"}.get(level, level)


def test_remotes_launch_names_a_missing_remotes_file(tmp_path):
    function, defaults = _evaluate_with_stubs(REMOTES)
    with pytest.raises(RuntimeError, match="remotes_file .*nope.yaml"):
        function(dict(defaults, remotes_file=str(tmp_path / "nope.yaml")))


def test_launch_files_evaluate_with_real_launch_ros():
    pytest.importorskip(
        "launch_ros",
        reason="launch_ros is not installable from PyPI here; this check runs on a "
        "real ROS 2 install (the ast and stand-in checks above always run)",
    )
    from launch import LaunchDescription

    for path in (EDGE, REMOTES):
        spec = importlib.util.spec_from_file_location(re.sub(r"\W", "_", path.name), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(module.generate_launch_description(), LaunchDescription)
