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
# Installed wheels come byte-compiled (pip compiles them); an editable checkout
# does not, and with PYTHONDONTWRITEBYTECODE set every worker would compile our
# sources again. Compile them once so both clients start from bytecode.
unset PYTHONDONTWRITEBYTECODE
"$venv/bin/python" -m compileall -q dispatch_client
exec "$venv/bin/python" -m bench "$@"
