#!/usr/bin/env bash
# The project's test command (README: `make test`). Sets the machine up first, then runs
# formatting, lints, the native test suite (unit, real Prometheus, real Envoy, full loop),
# the core tests again under wasm32, and the manifest validation. Fails on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

step "setup"
scripts/setup.sh

# The Go builds (the Kubernetes control plane and istiod, each cached in ~/.cache/veer) need
# only Go, and a cold one takes minutes (about 5 and 6.5 on 2 cores), so they run beside the
# Rust steps instead of after them; the tests wait for them. Their output goes to a log,
# shown if they fail. A warm run finds both cached in well under a second.
go_log="$(mktemp -t veer-go-builds.XXXXXX)"
step "Kubernetes control plane and istiod binaries: building in the background ($go_log)"
(scripts/kube-build.sh && scripts/istiod-build.sh) >"$go_log" 2>&1 &
go_builds=$!
# A failing step must not leave the build running unowned: let it finish (it caches its
# result or cleans up after itself) before this script exits.
trap 'wait "$go_builds" 2>/dev/null || true' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (native, all targets)"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo clippy (filter, wasm32)"
cargo clippy -p veer-filter -p veer-core --target wasm32-unknown-unknown -- -D warnings

step "build: filter (wasm32, release, wasm-opt) and controller"
scripts/build-filter.sh
cargo build -p veer-controller --bins

# Compiling the test binaries is most of what the tests step would do first; doing it here
# overlaps it with the Go builds (which spend part of their time downloading and linking).
step "build: test binaries"
cargo test --workspace --no-run

step "Kubernetes control plane and istiod binaries: waiting for the background build"
if ! wait "$go_builds"; then
    cat "$go_log"
    echo "the Go builds failed (above)"
    exit 1
fi
grep -E '^(kube|istiod)-build: (reusing|built|done)' "$go_log" || true
rm -f "$go_log"

step "tests (native)"
cargo test --workspace --no-fail-fast

step "core tests under wasm32 (Node, wasm-bindgen-test)"
filter/core/run-wasm-tests.sh
