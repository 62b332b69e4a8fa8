#!/usr/bin/env bash
# Create .venv and install stockade with its development tools, once.
# Re-runs pip only when pyproject.toml changed. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "stockade needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "bootstrap: installing python3-venv (Debian)" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv .venv
        else
            echo "bootstrap: '$PY -m venv' failed; on Debian run: sudo apt-get install python3-venv" >&2
            exit 1
        fi
    fi
fi
stamp=".venv/.stockade-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing stockade and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$want" > "$stamp"
fi
# setuptools' distutils-precedence.pth (in every Python 3.11 venv) runs code,
# "import _distutils_hack", in every start-up, the Keep's included; the Keep's
# launch measurement refuses site-packages .pth files that run code (ADR 0013).
# Nothing stockade runs needs it: the editable install builds in an isolated
# environment, and its own .pth is a plain path line.
rm -f .venv/lib/python3*/site-packages/distutils-precedence.pth
