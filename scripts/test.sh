#!/usr/bin/env bash
# Sets up whatever is missing, starts PostgreSQL if it is installed but stopped, then runs lint, types and tests.
# Extra arguments go to pytest (e.g. ./scripts/test.sh tests/core -x).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

start_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    return 0
  fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "test: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do
      pg_isready -q -h 127.0.0.1 -p 5432 && return 0
      sleep 1
    done
  fi
  echo "test: no PostgreSQL on 127.0.0.1:5432; its tests will be skipped (CI fails instead)" >&2
}
start_postgres

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
