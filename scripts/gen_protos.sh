#!/usr/bin/env bash
# Regenerate the betterproto2 model from protos/ into the directory given
# (default: dispatch_client/_proto), plus descriptors.binpb: the serialized
# descriptors of protos/ and their imports (served by the reference server's
# reflection), and fast_descriptors.binpb: the same with map entries made plain,
# which the optional fast codec (dispatch_client/_fastdecode.py) loads instead of
# compiling protos at run time. Used by `make protos` and by the freshness test,
# so both produce byte-identical output.
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
  --include_imports --descriptor_set_out="$out/descriptors.binpb" \
  $(find . -name '*.proto' | sort) >/dev/null
python "$root/scripts/fast_descriptors.py" "$out/descriptors.binpb" "$out/fast_descriptors.binpb"
