#!/usr/bin/env bash
# Regenerate the protobuf and gRPC code from src/sperse/_wire/sperse.proto.
# The output is committed; tests/wire/test_generated.py checks it is current.
# Usage: scripts/gen_proto.sh [OUTPUT_ROOT]   (default: src)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${1:-src}
"$PY" -m grpc_tools.protoc -Isrc --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  src/sperse/_wire/sperse.proto
