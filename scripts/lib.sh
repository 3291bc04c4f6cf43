# Shared by scripts/run and scripts/test: the project's own virtualenv, installed from pyproject.toml.
# Sourced, not run. Needs only python3 (3.11 or newer) on the machine.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: zlh-actors needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

create_venv() {
    local python
    python=$(find_python) || return 1
    if "$python" -m venv "$VENV" >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$VENV"
    # Debian splits venv support out of python3; as root we can add it, otherwise say what to do.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        local version
        version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        echo "python venv support is missing; installing python${version}-venv with apt-get" >&2
        apt-get update -qq && apt-get install -y -qq "python${version}-venv" >/dev/null
        "$python" -m venv "$VENV"
    else
        echo "error: '$python -m venv' failed; install the python3-venv package" >&2
        return 1
    fi
}

# ensure_venv [EXTRAS]: create .venv if needed and (re)install the project when pyproject.toml changed.
ensure_venv() {
    local extras=${1:-} spec stamp wanted
    [ -x "$VENV/bin/python" ] || create_venv || return 1
    spec="$ROOT"
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    stamp="$VENV/.zlh-installed"
    wanted="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) $extras"
    if [ ! -f "$stamp" ] || ! grep -qxF "$wanted" "$stamp"; then
        echo "installing zlh-actors${extras:+ [$extras]} into $VENV" >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" || return 1
        echo "$wanted" >>"$stamp"
    fi
}

# ensure_chromium: the dashboard's browser test drives Debian's chromium at /usr/bin/chromium (Playwright
# is given its path and never downloads a browser). As root with apt-get we install it; otherwise say what to do.
ensure_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "chromium is missing; installing Debian's chromium with apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "error: /usr/bin/chromium is missing; install Debian's chromium package (apt-get install chromium)" >&2
        return 1
    fi
}
