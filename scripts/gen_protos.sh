#!/usr/bin/env bash
# Regenerate the betterproto2 model from protos/ into the directory given
# (default: dispatch_client/_proto). Used by `make protos` and by the
# freshness test, so both produce byte-identical output.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/dispatch_client/_proto}"
venv_bin="$(dirname "$(command -v python)")"
# protoc finds the plugin on PATH; put the interpreter's bin dir first.
export PATH="$venv_bin:$PATH"
rm -rf "$out"
mkdir -p "$out"
cd "$root/protos"
python -m grpc_tools.protoc -I . \
  --python_betterproto2_out="$out" \
  --python_betterproto2_opt=client_generation=async,server_generation=async \
  $(find . -name '*.proto' | sort) >/dev/null
