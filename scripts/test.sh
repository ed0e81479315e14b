#!/usr/bin/env bash
# The one command that installs everything on a fresh Debian machine and runs
# the whole test suite:   bash scripts/test.sh [PYTEST_ARGS...]
#
# Test families: the engines' client libraries cannot share one environment
# (see [tool.uv] conflicts in pyproject.toml), so each family gets its own uv
# environment and its own tests:
#   main        .venv          everything except tests/engines/
#   <name>      .venvs/<name>  tests/engines/<name>/ only
# Families run in two lanes at once (main | the engines one after another),
# each family's output printed whole when it ends. PYTEST_ARGS go to every family. Paths among them pick families: a path under
# tests/engines/<name>/ runs in <name>, any other path in main; a family none
# of the paths belong to is skipped. (An argument counts as a path when it
# does not start with "-" and names an existing file or folder.)
# Z4J_FAMILIES="main arq" limits the run to the named families.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@"
}

# ------------------------------------------------------------------ tools
source scripts/ensure-uv.sh

if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server"
    apt_install redis-server
fi

if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "== installing postgresql"
    apt_install postgresql
fi

export UV_PYTHON_DOWNLOADS=never
PYTHON=python3.11

# ----------------------------------------------------------- path routing
OPTS=()
PATHS=()
for arg in "$@"; do
    if [[ $arg != -* && -e ${arg%%::*} ]]; then PATHS+=("$arg"); else OPTS+=("$arg"); fi
done

family_wanted() {
    [ -z "${Z4J_FAMILIES:-}" ] && return 0
    [[ " ${Z4J_FAMILIES//,/ } " == *" $1 "* ]]
}

# Prints the PATHS that belong to family $1, one per line.
family_paths() {
    local name=$1 p rel
    for p in ${PATHS[@]+"${PATHS[@]}"}; do
        rel=$(realpath -m --relative-to="$ROOT" "${p%%::*}")
        if [ "$name" = main ]; then
            [[ $rel == tests/engines || $rel == tests/engines/* ]] || printf '%s\n' "$p"
        else
            [[ $rel == "tests/engines/$name" || $rel == "tests/engines/$name/"* ]] && printf '%s\n' "$p"
        fi
    done
    return 0
}

FAILED=()
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/z4j-test-run.XXXXXX")
trap 'rm -rf "$RUN_DIR"' EXIT
PREPARED=()

# prepare_family NAME EXTRAS... -- PYTEST_ARGS...
#   EXTRAS: an optional-dependency name each (-> uv sync --extra NAME); words
#   starting with "-" go to uv sync verbatim (e.g. --group=dev).
#   PYTEST_ARGS: the family's own pytest arguments; the user's go after them.
# Syncs the family's environment now and writes its pytest command to
# $RUN_DIR/NAME.sh; run_lane runs them.
prepare_family() {
    local name=$1; shift
    local sync_args=() pytest_args=() targets=() env_dir header rc
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        if [[ $1 == -* ]]; then sync_args+=("$1"); else sync_args+=(--extra "$1"); fi
        shift
    done
    [ $# -gt 0 ] && shift
    pytest_args=("$@")

    family_wanted "$name" || return 0
    if [ "$name" = main ]; then env_dir=.venv; else env_dir=.venvs/$name; fi
    header="=== tests: family $name ($env_dir)"

    if [ ${#PATHS[@]} -gt 0 ]; then
        mapfile -t targets < <(family_paths "$name")
        if [ ${#targets[@]} -eq 0 ]; then
            echo "$header: skipped (no selected paths)"
            return 0
        fi
    elif [ "$name" != main ]; then
        if [ ! -d "tests/engines/$name" ]; then
            echo "$header: skipped (no tests/engines/$name)"
            return 0
        fi
        targets=("tests/engines/$name")
    fi
    echo "=== syncing family $name ($env_dir)"
    rc=0
    UV_PROJECT_ENVIRONMENT=$env_dir uv sync --frozen --compile-bytecode --python "$PYTHON" "${sync_args[@]}" || rc=$?
    if [ $rc -ne 0 ]; then
        echo "=== family $name: uv sync failed (exit $rc)"
        FAILED+=("$name")
        return 0
    fi
    {
        echo "echo $(printf '%q' "$header")"
        printf 'UV_PROJECT_ENVIRONMENT=%q uv run --frozen --no-sync python -m pytest -n 2 -q -p no:cacheprovider' "$env_dir"
        printf ' %q' ${pytest_args[@]+"${pytest_args[@]}"} ${OPTS[@]+"${OPTS[@]}"} ${targets[@]+"${targets[@]}"}
        echo
    } > "$RUN_DIR/$name.sh"
    PREPARED+=("$name")
}

# run_lane NAME... : runs the prepared families one after another, each
# family's output kept in its log and printed whole when it ends; the
# failed ones are listed in $RUN_DIR/failed.
run_lane() {
    local name rc
    for name in "$@"; do
        [ -f "$RUN_DIR/$name.sh" ] || continue
        rc=0
        bash "$RUN_DIR/$name.sh" > "$RUN_DIR/$name.log" 2>&1 || rc=$?
        if [ $rc -eq 5 ] && [ "$name" != main ]; then
            echo "=== family $name: no tests collected" >> "$RUN_DIR/$name.log"
            rc=0
        fi
        if [ $rc -ne 0 ]; then
            echo "=== family $name: FAILED (pytest exit $rc)" >> "$RUN_DIR/$name.log"
            echo "$name" >> "$RUN_DIR/failed"
        fi
        cat "$RUN_DIR/$name.log"
    done
}

# --------------------------------------------------------------- families
# The main family's tests that share a module collector are one xdist unit each
# (tests/conftest.py marks them), handed out in collection order: long ones first.
prepare_family main all celery --group=dev --group=bench --group=tui-test -- --ignore=tests/engines \
    --dist=loadgroup --no-loadscope-reorder
# Celery tests share one real worker per test file (module fixtures): keep a
# file's tests in one xdist process.
prepare_family celery celery collector --group=dev -- --dist=loadfile

# One environment per engine (arq's redis<6 cannot live with the others, and a
# family of its own keeps each engine's pins honest). Each family's tests share
# real workers per file, so a file stays in one xdist process.
prepare_family rq       rq       collector --group=dev --group=rq-test       -- --dist=loadfile
prepare_family huey     huey     collector --group=dev --group=huey-test     -- --dist=loadfile
prepare_family arq      arq      collector --group=dev                       -- --dist=loadfile
prepare_family dramatiq dramatiq collector --group=dev --group=dramatiq-test -- --dist=loadfile
prepare_family taskiq   taskiq   collector --group=dev --group=taskiq-test   -- --dist=loadfile

# Two lanes at once: the main family, and the engine families one after
# another. Engine tests mostly wait on real workers, so they overlap well with
# the main family; Z4J_TEST_LANES=1 runs everything in one lane.
ENGINES=(celery rq huey arq dramatiq taskiq)
if [ "${Z4J_TEST_LANES:-2}" = 1 ]; then
    run_lane main "${ENGINES[@]}"
else
    run_lane main &
    MAIN_LANE=$!
    run_lane "${ENGINES[@]}"
    wait "$MAIN_LANE"
fi
if [ -f "$RUN_DIR/failed" ]; then
    mapfile -t LANE_FAILED < "$RUN_DIR/failed"
    FAILED+=("${LANE_FAILED[@]}")
fi

if [ ${#FAILED[@]} -gt 0 ]; then
    echo "=== FAILED families: ${FAILED[*]}"
    exit 1
fi
echo "=== all test families passed"
