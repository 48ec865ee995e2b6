#!/usr/bin/env bash
# Regenerate the checked-in stubs (shop_pb2.py, shop_pb2.pyi, shop_pb2_grpc.py) from shop.proto.
#
#   examples/shop/regen.sh          # rewrite the stubs
#   examples/shop/regen.sh --check  # exit 1 if the checked-in stubs differ from a fresh build
#
# Why a pinned generator: generated stubs refuse to load on a runtime older than the generator
# (shop_pb2_grpc.py checks GRPC_GENERATED_VERSION against grpc.__version__, shop_pb2.py checks
# the protobuf gencode version). pyproject.toml promises grpcio>=1.66 and protobuf>=5.27, so the
# stubs come from grpcio-tools 1.65.5 (GRPC_GENERATED_VERSION 1.65.5, protoc 26.1 -> protobuf
# gencode 5.26.1), below both bounds, whatever newer grpcio-tools the development venv has.
# tests/test_shop.py checks both pins against pyproject.toml, and the descriptor against
# shop.proto. The script uses $PYTHON if its grpcio-tools is exactly that version, and otherwise
# builds a private generator venv under ${XDG_CACHE_HOME:-~/.cache}/rpcscope.
set -euo pipefail

GRPC_TOOLS_VERSION="1.65.5"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${1:-write}"

python="${PYTHON:-python3}"
tools_version="$("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null || true)"
if [[ "$tools_version" != "$GRPC_TOOLS_VERSION" ]]; then
  genvenv="${XDG_CACHE_HOME:-$HOME/.cache}/rpcscope/grpc-tools-$GRPC_TOOLS_VERSION"
  if [[ ! -x "$genvenv/bin/python" ]]; then
    python3 -m venv "$genvenv"
    "$genvenv/bin/pip" install -q "grpcio-tools==$GRPC_TOOLS_VERSION"
  fi
  python="$genvenv/bin/python"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$python" -m grpc_tools.protoc -I "$here" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "$here/shop.proto"
# protoc writes `import shop_pb2`, which only works with the folder on sys.path; the stubs live
# in the package rpcscope.example_shop, so make the import relative.
sed -i 's/^import shop_pb2 as shop__pb2$/from . import shop_pb2 as shop__pb2/' "$out/shop_pb2_grpc.py"

status=0
for f in shop_pb2.py shop_pb2.pyi shop_pb2_grpc.py; do
  if [[ "$mode" == "--check" ]]; then
    if ! diff -u "$here/$f" "$out/$f"; then
      echo "examples/shop/$f is stale: run examples/shop/regen.sh" >&2
      status=1
    fi
  else
    cp "$out/$f" "$here/$f"
  fi
done
exit "$status"
