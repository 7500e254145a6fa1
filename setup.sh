#!/usr/bin/env bash
# One-step set-up: a virtual environment at .venv with rnnkit (editable) and test tools.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements/ci.txt
.venv/bin/pip install --quiet --disable-pip-version-check -c requirements/ci.txt -e '.[test]'
