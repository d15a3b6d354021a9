#!/usr/bin/env bash
# Runs veer-core's tests compiled to wasm32-unknown-unknown under Node, the same test bodies
# as `cargo test -p veer-core` (proptest properties excepted: they are native-only). This is
# what proves the 32-bit filter computes the same buckets and cookies as the 64-bit side.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v wasm-bindgen-test-runner >/dev/null 2>&1; then
    version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
    echo "error: wasm-bindgen-test-runner is not installed (needed to run wasm32 tests under Node)." >&2
    echo "install it with: cargo install wasm-bindgen-cli --version ${version:-<wasm-bindgen version in Cargo.lock>} --locked" >&2
    exit 1
fi
if ! command -v node >/dev/null 2>&1; then
    echo "error: node is not installed; wasm-bindgen-test-runner runs the tests in Node.js." >&2
    echo "install it with: apt-get install -y nodejs" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "error: the wasm32-unknown-unknown target is missing." >&2
    echo "install it with: rustup target add wasm32-unknown-unknown" >&2
    exit 1
fi

CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p veer-core --target wasm32-unknown-unknown "$@"
