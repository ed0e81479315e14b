#!/usr/bin/env bash
# Runs z4j on this machine, installing what it needs first (uv, the Python
# packages, and redis-server for the demo's Celery broker):
#
#   bash scripts/run.sh [z4j demo options]        the demo: a collector on a fresh
#       SQLite, a real Celery worker, beat and task traffic, and the console
#       logged in (--no-tui: headless, prints Z4J_URL and Z4J_API_TOKEN).
#       Ctrl-C stops everything it started.
#   bash scripts/run.sh --collector [z4j serve options, e.g. --port 7400 --host 0.0.0.0]
#       just the collector, on the embedded default (SQLite at $Z4J_HOME/z4j.db,
#       ~/.z4j by default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
source scripts/ensure-uv.sh
if [ "${1:-}" = --collector ]; then
    shift
    uv sync --frozen --quiet --inexact --compile-bytecode --python python3.11 --extra all
    exec uv run --frozen --no-sync z4j serve "$@"
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server (the demo's Celery broker)" >&2
    ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    ${SUDO} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
uv sync --frozen --quiet --inexact --compile-bytecode --python python3.11 --extra all --extra celery
exec uv run --frozen --no-sync z4j demo "$@"
