#!/usr/bin/env bash
# Run the demo in the project venv: scripts/demo.sh [demo args...]  (--help lists them)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$VENV/bin/python" -m ped_sam_ros.tools.demo "$@"
