#!/usr/bin/env bash
# Builds, or reuses from the cache, istiod (`pilot-discovery`) for the tests that put real
# istiod in the loop (scripts/kube-up.sh --istio calls this), and prints the binary's path on
# the last line of stdout.
#
# Pinned: istio.io/istio at ISTIO_PILOT_VERSION below, the only version of that module that
# the project's Go module proxy serves (a pseudo-version of Istio's master, 2026-08-27). It is
# built with `go install pkg@version`, so with Istio's own go.mod and go.sum: Istio's
# dependency versions, not the Kubernetes ones of scripts/kube/go.mod. (Adding Istio to the
# scripts/kube module would share Go's build cache with the Kubernetes binaries but move the
# k8s.io libraries to whatever Istio requires, so the tested Kubernetes version would no
# longer be the one versions.env names.)
#
# The cache entry ~/.cache/veer/istiod-<version>-<hash>/ (or under $VEER_CACHE_DIR) is keyed
# by the version, the build flags and the Go version. It is built in a temporary directory
# and renamed into place when complete; a lock serialises concurrent builds.
#
# Measured on the 2-core machine (2026-12-05; docs/istiod.md has the rest): cold (no Istio
# packages in Go's build cache, modules downloaded too) 391 s while two Rust builds ran; with
# Go's build cache warm 13 s; a cache hit well under a second. The binary is about 130 MB,
# Go's build cache grows by more than 1.5 GB.
set -euo pipefail

ISTIO_PILOT_VERSION=v0.0.0-20260827124520-eed52ebb66ad
pkg=istio.io/istio/pilot/cmd/pilot-discovery

say() { printf '%s\n' "$*" >&2; }
die() { say "istiod-build: $*"; exit 1; }

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null 2>&1 ||
    die "Go is not installed; it is needed to build istiod. Install Go 1.26 or newer: \
\`curl -fsSL https://go.dev/dl/go1.26.8.linux-amd64.tar.gz | tar -C /usr/local -xz\` and add \
/usr/local/go/bin to the PATH."

# Stripped (130 MB instead of 190). No other flag on purpose: -trimpath, -gcflags or a
# changed CGO_ENABLED would key every package anew in Go's build cache, so a warm build
# (after `go install` of the same version with these flags) would become a cold one.
build_flags=(-ldflags "-s -w")
hash="$(echo "$pkg@$ISTIO_PILOT_VERSION CGO_ENABLED=$(go env CGO_ENABLED) ${build_flags[*]} $(go env GOVERSION)" |
    sha256sum | cut -c1-12)"
cache_root="${VEER_CACHE_DIR:-${HOME:?istiod-build: HOME is not set (the cache is ~/.cache/veer; or set VEER_CACHE_DIR)}/.cache/veer}"
entry="$cache_root/istiod-$ISTIO_PILOT_VERSION-$hash"

reuse() {
    if [[ -x "$entry/bin/pilot-discovery" && -f "$entry/complete" ]]; then
        say "istiod-build: reusing $entry"
        echo "$entry/bin/pilot-discovery"
        exit 0
    fi
}
reuse
mkdir -p "$cache_root"
exec 9>"$cache_root/istiod-build.lock"
if ! flock -n 9; then
    say "istiod-build: another build is running; waiting for it ($cache_root/istiod-build.lock)"
    flock 9
fi
reuse

tmp="$(mktemp -d "$cache_root/.istiod-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
started=$SECONDS
say "istiod-build: building $pkg@$ISTIO_PILOT_VERSION"
say "istiod-build:   cold (empty Go build cache) about 6.5 min on 2 cores under load; into $entry"
# GOFLAGS cleared: a -mod flag from the environment would not apply to `go install pkg@v`.
GOFLAGS= GOBIN="$tmp/bin" go install "${build_flags[@]}" "$pkg@$ISTIO_PILOT_VERSION" ||
    die "go install failed (above); nothing was cached"
"$tmp/bin/pilot-discovery" version --short >/dev/null 2>&1 || die "the built pilot-discovery does not run"
touch "$tmp/complete"
chmod 755 "$tmp"
if ! mv -T "$tmp" "$entry" 2>/dev/null; then
    rm -rf "$entry"
    mv -T "$tmp" "$entry"
fi
trap - EXIT
say "istiod-build: built in $((SECONDS - started)) s: $entry"
echo "$entry/bin/pilot-discovery"
