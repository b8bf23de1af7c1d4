#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs freedom-events (import name `freedom`) with its
# development extras (the test suite's libraries, mypy, build) into it. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: $PY is missing or older than Python 3.11; install Python 3.11+ or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.freedom-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing freedom and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # The distribution was called `freedom` before (a name PyPI gives to another project): drop it.
  if .venv/bin/python -m pip show -q freedom >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y freedom
  fi
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
