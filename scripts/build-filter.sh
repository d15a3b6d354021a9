#!/usr/bin/env bash
# Builds the filter as it ships: `cargo build --release` for wasm32, then binaryen's
# `wasm-opt -Os` over the module, in place. wasm-opt takes about 12% off what LLVM leaves
# (401 KB -> 354 KB, filter/wasm/README.md); it is the usual last step for proxy-wasm
# modules. The tests, the demo and the benchmarks all load this same file:
#   target/wasm32-unknown-unknown/release/veer_filter.wasm
# scripts/setup.sh installs wasm-opt (npm `binaryen`, pinned) into .tools/binaryen.
set -euo pipefail
cd "$(dirname "$0")/.."

WASM_OPT=.tools/binaryen/node_modules/.bin/wasm-opt
if [ ! -x "$WASM_OPT" ]; then
  echo "build-filter: $WASM_OPT is missing. Install it with: scripts/setup.sh" >&2
  echo "  (or: npm install --prefix .tools/binaryen binaryen@$(cat scripts/binaryen-version))" >&2
  exit 1
fi

cargo build -p veer-filter --target wasm32-unknown-unknown --release "$@"

target=${CARGO_TARGET_DIR:-target}
out="$target/wasm32-unknown-unknown/release/veer_filter.wasm"
# Cargo links its output again on every build, fresh or not, so this always starts from
# LLVM's module: a few seconds, and never an optimised file optimised twice.
raw=$(stat -c %s "$out")
# The module's target-features section is stripped, so its features are named here: the
# ones Rust's wasm32-unknown-unknown target emits.
"$WASM_OPT" -Os \
  --enable-bulk-memory --enable-bulk-memory-opt --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
  "$out" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "build-filter: $out $raw -> $(stat -c %s "$out") bytes (wasm-opt -Os)"
