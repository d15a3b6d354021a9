#!/usr/bin/env bash
# wasm-opt -Os with the feature set of Rust's wasm32-unknown-unknown output: the one
# optimisation step after cargo, shared by scripts/build-filter.sh (the shipped module) and
# bench/veerbench/size.py (the same step on a build that keeps function names).
#   scripts/wasm-opt.sh IN.wasm OUT.wasm [more wasm-opt flags, e.g. -g to keep the names]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
WASM_OPT="$root/.tools/binaryen/node_modules/.bin/wasm-opt"
if [ ! -x "$WASM_OPT" ]; then
  echo "wasm-opt.sh: $WASM_OPT is missing. Install it with: scripts/setup.sh" >&2
  echo "  (or: npm install --prefix .tools/binaryen binaryen@$(cat "$root/scripts/binaryen-version"))" >&2
  exit 1
fi
# The module's target-features section is stripped by the release profile, so the features
# are named here: the ones Rust's wasm32-unknown-unknown target emits.
exec "$WASM_OPT" -Os \
  --enable-bulk-memory --enable-bulk-memory-opt --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
  "${@:3}" "$1" -o "$2"
