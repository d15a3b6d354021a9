# Sourced by scripts/kube-build.sh and scripts/istiod-build.sh: what the two Go builds share.
# Finding Go, and a cache entry under ~/.cache/veer (or $VEER_CACHE_DIR) that is built in a
# temporary directory beside it and renamed into place only when complete, so an interrupted
# build is never reused, with a lock that makes concurrent callers build once.
#
# The caller sets `tool` (the name in messages and in the lock file's name) and defines `say`
# and `die`. Functions:
#   go_or_die WHAT              Go on the PATH (also from /usr/local/go/bin), or exit with how
#                               to install it; WHAT says what Go is needed for
#   cache_root                  prints the cache directory
#   cache_lock                  takes the lock, saying so when it has to wait
#   cache_start ENTRY           makes the temporary directory (path in $tmp), removed on exit
#   cache_publish ENTRY         marks $tmp complete and renames it to ENTRY
#   cache_complete ENTRY FILE   true when ENTRY is complete and holds the executable FILE

go_or_die() {
    # The official tarball's place, where this project's machines have Go, even when a
    # non-login shell's PATH lacks it.
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
        PATH="$PATH:/usr/local/go/bin"
    fi
    command -v go >/dev/null 2>&1 ||
        die "Go is not installed; it is needed to build $1. Install Go 1.26 or newer (the \
version scripts/kube/go.mod names) from the official tarball: \
\`curl -fsSL https://go.dev/dl/go1.26.8.linux-amd64.tar.gz | tar -C /usr/local -xz\` and add \
/usr/local/go/bin to the PATH."
}

cache_root() {
    echo "${VEER_CACHE_DIR:-${HOME:?$tool: HOME is not set (the cache is ~/.cache/veer; or set VEER_CACHE_DIR)}/.cache/veer}"
}

cache_complete() {
    [[ -x "$1/$2" && -f "$1/complete" ]]
}

cache_lock() {
    local root
    root="$(cache_root)"
    mkdir -p "$root"
    exec 9>"$root/$tool.lock"
    if ! flock -n 9; then
        say "$tool: another build is running; waiting for it ($root/$tool.lock)"
        flock 9
    fi
}

cache_start() {
    tmp="$(mktemp -d "$(dirname "$1")/.$tool.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
}

cache_publish() {
    touch "$tmp/complete"
    chmod 755 "$tmp"
    if ! mv -T "$tmp" "$1" 2>/dev/null; then
        # Only a leftover incomplete entry can be in the way (callers return a complete one
        # before building).
        rm -rf "$1"
        mv -T "$tmp" "$1"
    fi
    trap - EXIT
}
