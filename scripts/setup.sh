#!/usr/bin/env bash
# Sets up whatever is missing: a virtual environment in .venv with torch (CPU build where the machine offers it)
# and this project with its test extras. Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  # pinned first, so that no dependency pulls a multi-GB build of another version
  echo "setup: installing torch==$TORCH_VERSION"
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
fi
stamp="$VENV/.hanbot-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing hanbot and its dependencies"
  "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[test]"  # the versions of scripts/lock.sh
  echo "$want" > "$stamp"
fi
