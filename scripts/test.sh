#!/usr/bin/env bash
# The project's test command (README: `make test`). Sets the machine up first, then runs
# formatting, lints, the native test suite (unit, real Prometheus, real Envoy, full loop),
# the core tests again under wasm32, and the manifest validation. Fails on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (native, all targets)"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo clippy (filter, wasm32)"
cargo clippy -p veer-filter -p veer-core --target wasm32-unknown-unknown -- -D warnings

step "build: filter (wasm32, release, wasm-opt) and controller"
scripts/build-filter.sh
cargo build -p veer-controller --bins

step "Kubernetes control plane binaries (cached in ~/.cache/veer)"
scripts/kube-build.sh
step "istiod (pilot-discovery, cached in ~/.cache/veer) for tests/tests/istiod.rs"
scripts/istiod-build.sh

step "tests (native)"
cargo test --workspace --no-fail-fast

step "core tests under wasm32 (Node, wasm-bindgen-test)"
filter/core/run-wasm-tests.sh
