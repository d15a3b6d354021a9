#!/usr/bin/env bash
# Builds the filter as it ships: `cargo build --release` for wasm32, then binaryen's
# `wasm-opt -Os` over the module, in place (scripts/wasm-opt.sh). wasm-opt takes about 12%
# off what LLVM leaves (401 KB -> 354 KB, filter/wasm/README.md); it is the usual last step
# for proxy-wasm modules. The tests, the demo and the benchmarks all load this same file:
#   target/wasm32-unknown-unknown/release/veer_filter.wasm
# scripts/setup.sh installs wasm-opt (npm `binaryen`, pinned) into .tools/binaryen.
# Extra arguments go to cargo (e.g. --locked).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p veer-filter --target wasm32-unknown-unknown --release "$@"

out="${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/veer_filter.wasm"
# Cargo links its output again on every build, fresh or not, so this always starts from
# LLVM's module: a few seconds, and never an optimised file optimised twice.
raw=$(stat -c %s "$out")
scripts/wasm-opt.sh "$out" "$out.tmp"
mv "$out.tmp" "$out"
echo "build-filter: $out $raw -> $(stat -c %s "$out") bytes (wasm-opt -Os)"
