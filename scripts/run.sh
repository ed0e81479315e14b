#!/usr/bin/env bash
# Runs the z4j collector on the embedded default (SQLite at $Z4J_HOME/z4j.db,
# ~/.z4j by default), installing what it needs first:
#   bash scripts/run.sh [z4j serve options, e.g. --port 7400 --host 0.0.0.0]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
source scripts/ensure-uv.sh
uv sync --frozen --quiet --inexact --compile-bytecode --python python3.11 --extra all
exec uv run --frozen --no-sync z4j serve "$@"
