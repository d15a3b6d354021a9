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
# by the version, the build flags and the Go version. It is built and published as
# kube-build's is (scripts/go-cache.sh: a temporary directory renamed into place when
# complete, a lock for concurrent builds).
#
# Measured on the 2-core machine (2026-12-05; docs/istiod.md has the rest): cold (no Istio
# packages in Go's build cache, modules downloaded too) 391 s while two Rust builds ran; with
# Go's build cache warm 13 s; a cache hit well under a second. The binary is about 130 MB,
# Go's build cache grows by more than 1.5 GB.
set -euo pipefail

ISTIO_PILOT_VERSION=v0.0.0-20260827124520-eed52ebb66ad
pkg=istio.io/istio/pilot/cmd/pilot-discovery

tool=istiod-build
say() { printf '%s\n' "$*" >&2; }
die() { say "$tool: $*"; exit 1; }
# shellcheck source=go-cache.sh
source "$(dirname "$0")/go-cache.sh"

go_or_die istiod

# Stripped (130 MB instead of 190). No other flag on purpose: -trimpath, -gcflags or a
# changed CGO_ENABLED would key every package anew in Go's build cache, so a warm build
# (after `go install` of the same version with these flags) would become a cold one.
build_flags=(-ldflags "-s -w")
hash="$(echo "$pkg@$ISTIO_PILOT_VERSION CGO_ENABLED=$(go env CGO_ENABLED) ${build_flags[*]} $(go env GOVERSION)" |
    sha256sum | cut -c1-12)"
entry="$(cache_root)/istiod-$ISTIO_PILOT_VERSION-$hash"

reuse() {
    if cache_complete "$entry" bin/pilot-discovery; then
        say "$tool: reusing $entry"
        echo "$entry/bin/pilot-discovery"
        exit 0
    fi
}
reuse
cache_lock
# The build that held the lock may have produced this entry.
reuse

cache_start "$entry"
mkdir -p "$tmp/bin"
started=$SECONDS
say "$tool: building $pkg@$ISTIO_PILOT_VERSION"
say "$tool:   cold (empty Go build cache) about 6.5 min on 2 cores under load; into $entry"
# GOFLAGS cleared: a -mod flag from the environment would not apply to `go install pkg@v`.
GOFLAGS= GOBIN="$tmp/bin" go install "${build_flags[@]}" "$pkg@$ISTIO_PILOT_VERSION" ||
    die "go install failed (above); nothing was cached"
"$tmp/bin/pilot-discovery" version --short >/dev/null 2>&1 || die "the built pilot-discovery does not run"
cache_publish "$entry"
say "$tool: built in $((SECONDS - started)) s: $entry"
echo "$entry/bin/pilot-discovery"
