#!/usr/bin/env bash
# Build the environments of the official tracking SDKs that tests/clients drives.
#
#   .venv-clients/<name>/          one virtualenv per tests/clients/requirements-<name>.txt
#   tests/clients/node/node_modules   `npm ci` from the committed package-lock.json
#
# Idempotent: each environment carries a stamp holding a hash of what it was built from
# (the requirements file or package.json + package-lock.json, and the interpreter's
# version); it is rebuilt from scratch only when that hash changes. The stamp is written
# last, so an interrupted build is redone on the next run; test_official_clients.py treats
# an environment without its stamp as not installed.
#
# Outside CI a machine without Node.js/npm gets a warning and the Node client's tests skip;
# under CI=true that is an error.
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
CLIENTS=tests/clients
VENVS=.venv-clients
PIP_FLAGS=(--quiet --disable-pip-version-check --no-input)

say() { printf 'clients: %s\n' "$*"; }

# sha256 over the named files' contents and any extra words, independent of the platform.
fingerprint() {
    "$PYTHON" - "$@" <<'EOF'
import hashlib, sys
digest = hashlib.sha256()
for item in sys.argv[1:]:
    digest.update(item.encode() + b"\0")
    if not item.startswith("version:"):
        with open(item, "rb") as handle:
            digest.update(handle.read())
        digest.update(b"\0")
print(digest.hexdigest())
EOF
}

python_version="version:$("$PYTHON" -c 'import sys; print(sys.version)')"

build_venv() {
    local requirements=$1 name venv stamp want
    name=$(basename "$requirements" .txt)
    name=${name#requirements-}
    venv="$VENVS/$name"
    stamp="$venv/.stamp-requirements"
    want=$(fingerprint "$requirements" "$python_version")
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "$venv is up to date"
        return
    fi
    say "building $venv from $requirements"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install "${PIP_FLAGS[@]}" --no-deps -r "$requirements"
    "$venv/bin/python" -m pip check >/dev/null || {
        "$venv/bin/python" -m pip check
        say "$requirements does not pin a consistent set of packages" >&2
        exit 1
    }
    printf '%s\n' "$want" >"$stamp"
}

build_node() {
    local dir=$CLIENTS/node stamp want
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        if [ "${CI:-}" = "true" ]; then
            say "Node.js and npm are needed for the @segment/analytics-node tests" >&2
            exit 1
        fi
        say "WARNING: node/npm not found; the @segment/analytics-node tests will skip" >&2
        return
    fi
    stamp="$dir/node_modules/.stamp-tessera"
    want=$(fingerprint "$dir/package.json" "$dir/package-lock.json" "version:$(node --version)")
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "$dir/node_modules is up to date"
        return
    fi
    say "running npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$want" >"$stamp"
}

mkdir -p "$VENVS"
for requirements in "$CLIENTS"/requirements-*.txt; do
    build_venv "$requirements"
done
build_node
