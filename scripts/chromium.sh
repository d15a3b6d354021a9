#!/usr/bin/env bash
# Headless Chromium, as the report check runs it (tests/src/demo/report.rs) and as you can
# run it on a report of your own:
#   scripts/chromium.sh screenshot out/demo-report.html [OUT.png]   (default: next to the page)
#   scripts/chromium.sh dump-dom PAGE.html                          (the DOM after load, to stdout)
# The window is 1400x1000 unless CHROMIUM_WINDOW=W,H says otherwise. The flags keep it to
# itself: no sandbox (it may run as root), no GPU, no network of its own, a throwaway profile.
# scripts/setup.sh installs Chromium from Debian when run as root.
set -euo pipefail

usage() { echo "usage: $0 screenshot PAGE.html [OUT.png] | dump-dom PAGE.html" >&2; exit 2; }
[ $# -ge 2 ] || usage
mode=$1 page=$2

browser=""
for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
done
if [ -z "$browser" ]; then
  echo "chromium.sh: Chromium is not installed. Install it with: apt-get install -y chromium (or run scripts/setup.sh as root)" >&2
  exit 127
fi
[ -f "$page" ] || { echo "chromium.sh: $page does not exist" >&2; exit 1; }
url="file://$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"

profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --hide-scrollbars --user-data-dir="$profile" --window-size="${CHROMIUM_WINDOW:-1400,1000}")

case "$mode" in
  screenshot)
    out=${3:-${page%.html}.png}
    rm -f "$out"
    if ! "$browser" "${flags[@]}" --screenshot="$out" "$url" >"$log" 2>&1 || [ ! -s "$out" ]; then
      cat "$log" >&2
      echo "chromium.sh: no screenshot written to $out" >&2
      exit 1
    fi
    echo "$out"
    ;;
  dump-dom)
    if ! "$browser" "${flags[@]}" --dump-dom "$url" 2>"$log"; then
      cat "$log" >&2
      exit 1
    fi
    ;;
  *) usage ;;
esac
