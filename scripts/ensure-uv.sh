# Sourced by scripts/run.sh and scripts/test.sh: puts uv on PATH, installing
# it with pip when missing. Debian 12 marks its Python as externally managed
# (PEP 668), hence the second attempt.
if ! command -v uv >/dev/null 2>&1; then
    echo "== installing uv" >&2
    if ! python3 -m pip --version >/dev/null 2>&1; then
        ${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        ${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
    fi
    python3 -m pip install --quiet uv \
        || python3 -m pip install --quiet --break-system-packages uv
    hash -r
    if ! command -v uv >/dev/null 2>&1; then
        PATH="$(python3 -m site --user-base)/bin:$PATH"
    fi
    command -v uv >/dev/null 2>&1 || { echo "uv installed but not on PATH" >&2; exit 1; }
fi
export UV_PYTHON_DOWNLOADS=never
