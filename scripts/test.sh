#!/usr/bin/env bash
# Run the test suite in the project venv: scripts/test.sh [pytest args...]
#
# With no test paths (the whole suite, e.g. `scripts/test.sh` or `scripts/test.sh -m unit`)
# the linter runs first (`ruff check` and `ruff format --check` over the workspace, settings
# in ruff.toml) and a lint error fails the run. Runs of given test files or node ids skip it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

cd "$ROOT"
# One intra-op thread per process unless told otherwise: the tests use tiny models (many small
# tensor ops, where extra threads only spin) and often run several processes at once. On this
# 2-core machine this cut the unit run's CPU time several-fold (see docs/architecture.md, Tests).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# glibc's malloc keeps large blocks on its heap for reuse instead of mapping and unmapping each one:
# SAM's reference attention allocates 64-128 MiB matrices per global block, and mapping them anew
# (page faults, zeroed pages) cost about 1 s of system time per reference encoder pass here.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-1073741824}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1073741824}"
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    if [ -e "${arg%%::*}" ]; then
        exec "$VENV/bin/python" -m pytest "$@"
    fi
done
echo "[lint] ruff check + ruff format --check (ruff.toml)"
"$VENV/bin/ruff" check --quiet --output-format concise . || { echo "[lint] FAILED: ruff check (fix, or see ruff.toml)" >&2; exit 1; }
"$VENV/bin/ruff" format --check --quiet . ||
    { echo "[lint] FAILED: files above need \`ruff format\`" >&2; exit 1; }
exec "$VENV/bin/python" -m pytest "$@"
