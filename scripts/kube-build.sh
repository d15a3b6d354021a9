#!/usr/bin/env bash
# Builds, or reuses from the cache, the local Kubernetes control plane that the tests run
# (scripts/kube-up.sh calls this), and prints its bin directory on the last line of stdout.
#
# What it owns: the cache directory ~/.cache/veer/kube-<KUBE_VERSION>-<hash>/ (or under
# $VEER_CACHE_DIR), keyed by the versions in scripts/kube/versions.env and a hash of every
# input in scripts/kube/ and of this script, so a changed version or flag never reuses an
# old build. It holds:
#   bin/kubebin   one multi-call binary (scripts/kube/main.go): etcd, kube-apiserver,
#                 kube-controller-manager, kube-scheduler, kubectl and kwok
#   bin/<name>    a symlink to kubebin for each of those six names
#   crds/         the Istio and Gateway API CRDs, copied from the pinned Go modules
#
# The build goes into a temporary directory next to the cache entry and is renamed into
# place only when complete, so an interrupted build is never reused. A lock serialises
# concurrent builds (parallel tests on a cold cache build once). Both as istiod-build's
# (scripts/go-cache.sh).
#
# Needs Go (the version go.mod names, or newer) and the Go module proxy. A cold build takes
# about 5 minutes on 2 idle cores (numbers at the top of scripts/kube-up.sh) and leaves about
# 2.6 GB in Go's build cache and 0.7 GB in its module cache; the cache entry is 140 MB. A warm
# call takes well under a second.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/scripts/kube"
tool=kube-build
say() { printf '%s\n' "$*" >&2; }
die() { say "$tool: $*"; exit 1; }
# shellcheck source=go-cache.sh
source "$root/scripts/go-cache.sh"

# shellcheck source=kube/versions.env
source "$src/versions.env"

# go.mod is what gets built; versions.env is what the scripts and tests read. Keep them equal.
for pin in "k8s.io/kubernetes $KUBE_VERSION" "k8s.io/api => k8s.io/api $STAGING" \
    "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "sigs.k8s.io/kwok $KWOK_VERSION"; do
    grep -qF "$pin" "$src/go.mod" || die "scripts/kube/go.mod does not name \`$pin\` (versions.env)"
done

major="${KUBE_VERSION#v}"; major="${major%%.*}"
minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# CGO off as upstream builds these (pure Go: no C compiler in the build, fewer packages).
# -dwarf=false: the link strips debug info anyway (-s -w), so the compiler need not make it
# (a cold build took 470 CPU-s instead of 514). -mod=readonly: go.sum is committed; a missing
# sum is an error, not a silent change.
build_flags=(-mod=readonly -trimpath -gcflags=all=-dwarf=false -ldflags "$ldflags")

# The key: what goes into the binary (the module, its sums, main.go, the versions and the
# build flags), not this script's text, so that editing a message here rebuilds nothing.
hash="$( (cd "$src" && cat go.mod go.sum main.go versions.env && echo "CGO_ENABLED=0 ${build_flags[*]}") |
    sha256sum | cut -c1-12)"
entry="$(cache_root)/kube-$KUBE_VERSION-$hash"

reuse() {
    if cache_complete "$entry" bin/kubebin; then
        say "$tool: reusing $entry"
        echo "$entry/bin"
        exit 0
    fi
}
reuse
go_or_die "the control plane binaries"
cache_lock
# The build that held the lock may have produced this entry.
reuse

cache_start "$entry"
mkdir -p "$tmp/bin" "$tmp/crds/istio" "$tmp/crds/gateway-api"

started=$SECONDS
say "$tool: building etcd $ETCD_VERSION, Kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and kwok $KWOK_VERSION as one binary..."
say "$tool:   a cold build (empty Go caches) takes about 5 min on 2 idle cores, 11 min while other builds run; with Go's build cache warm, under a minute"
say "$tool:   into $entry"

(cd "$src" && CGO_ENABLED=0 go build "${build_flags[@]}" -o "$tmp/bin/kubebin" .) ||
    die "go build failed (above); nothing was cached"
for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
    ln -s kubebin "$tmp/bin/$name"
done
say "$tool: built in $((SECONDS - started)) s"

# The CRDs come from the same pinned modules the module proxy serves, so a fresh clone
# needs nothing beyond Go.
moddir() {
    (cd "$src" && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}
istio="$(moddir "istio.io/api@$ISTIO_API_VERSION")"
[[ -f "$istio/kubernetes/customresourcedefinitions.gen.yaml" ]] ||
    die "istio.io/api@$ISTIO_API_VERSION has no kubernetes/customresourcedefinitions.gen.yaml (at '$istio')"
cp "$istio/kubernetes/customresourcedefinitions.gen.yaml" "$tmp/crds/istio/"
gateway="$(moddir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
[[ -d "$gateway/config/crd/standard" ]] ||
    die "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION has no config/crd/standard (at '$gateway')"
cp "$gateway"/config/crd/standard/*.yaml "$tmp/crds/gateway-api/"
chmod -R u+w "$tmp/crds"

"$tmp/bin/kubectl" version --client >/dev/null || die "the built kubectl does not run"
cache_publish "$entry"
say "$tool: done in $((SECONDS - started)) s: $entry"
echo "$entry/bin"
