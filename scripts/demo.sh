#!/usr/bin/env bash
# Sets up whatever is missing, builds the tiny demo model on first use, and starts the console chat on it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
exec .venv/bin/python -m bot chat --demo "$@"
