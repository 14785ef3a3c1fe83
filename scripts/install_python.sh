#!/usr/bin/env bash
# Creates .venv and installs the project with its pinned dependencies (constraints.txt).
# Idempotent: the Makefile only calls it when pyproject.toml or constraints.txt changed.
set -euo pipefail

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setup: installing Python dependencies into .venv (first run takes about a minute)"
# Some machines list local package mirrors that do not exist; pip warns once per package
# about them, which buries real errors, so only those lines are dropped.
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel 2> >(grep -v '^WARNING: Location' >&2)
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]' 2> >(grep -v '^WARNING: Location' >&2)
