# Sourced by scripts/test.sh and scripts/demo.sh: set up the venv (idempotent) and the
# environment every process of ours runs in. Defines ROOT and VENV.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PED_SAM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PED_SAM_VENV="$VENV"
"$ROOT/scripts/setup.sh"

# DDS stays on this machine; tests and the demo also pick their own ROS_DOMAIN_ID per process.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA
# ament_index (share/ lookups: package.xml, config, interface files) finds the venv prefix.
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
