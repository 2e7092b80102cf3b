#!/usr/bin/env bash
# Rewrite requirements/constraints.txt from a fresh environment resolved without constraints (after changing the
# dependencies in pyproject.toml). The CPU build of torch is pinned as 2.13.0 (the local label dropped) so the
# file also constrains a machine that takes torch from PyPI's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet -e ".[all,dev]"
{ echo "# The tested environment (pip freeze of make install on Python 3.11, CPU): every install of the Makefile and CI"
  echo "# is constrained by it, so pip resolves without backtracking. Regenerate: scripts/lock.sh"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > requirements/constraints.txt
rm -rf "$tmp"
echo "wrote requirements/constraints.txt"
