#!/usr/bin/env bash
# `make bench`: set up bench/.venv (our package + the official client, which
# pins python-dateutil<3 and so cannot share the project's .venv), then run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv=bench/.venv
stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ bench/requirements.txt -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[fast]" -r bench/requirements.txt
  touch "$stamp"
fi
exec "$venv/bin/python" -m bench "$@"
