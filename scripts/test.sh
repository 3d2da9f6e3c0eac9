#!/usr/bin/env bash
# Run the test suite in the project venv: scripts/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

cd "$ROOT"
# Run the whole test/ folder unless test paths (or node ids) were given.
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    if [ -e "${arg%%::*}" ]; then
        exec "$VENV/bin/python" -m pytest "$@"
    fi
done
exec "$VENV/bin/python" -m pytest "$@"
