#!/usr/bin/env bash
# scripts/kube-down.sh DIR: stops the control plane that scripts/kube-up.sh DIR started, and
# nothing else. Idempotent: a second run, or a run on a DIR where nothing runs, does nothing.
#
# It stops exactly the processes listed in DIR/pids, and only while each still is what
# kube-up started: a PID whose /proc/PID/cmdline does not mention DIR has been reused by an
# unrelated process and is left alone. Each gets SIGTERM (to its process group: kube-up starts
# each in its own session, so helpers it forked go too), clients of the API server first, then
# the API server, then etcd; whatever has not exited by the deadline
# ($VEER_KUBE_DOWN_TIMEOUT, 10 s) gets SIGKILL. It returns when none of them runs. DIR itself
# (logs, state) is kept.
set -euo pipefail

say() { printf 'kube-down: %s\n' "$*" >&2; }
[[ $# -eq 1 ]] || { say "usage: scripts/kube-down.sh DIR"; exit 2; }
[[ -d "$1" ]] || { say "no such directory '$1': nothing to stop"; exit 0; }
dir="$(cd "$1" && pwd)"
[[ -f "$dir/pids" ]] || { say "no $dir/pids: nothing to stop"; exit 0; }
term_deadline="${VEER_KUBE_DOWN_TIMEOUT:-10}"

# ours PID: PID is running (not a zombie awaiting its reaper) and is one of DIR's processes.
ours() {
    local pid=$1 state
    [[ "$pid" =~ ^[0-9]+$ && "$pid" != "$$" ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]] || return 1
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) "
    [[ "$cmd" == *"$dir/"* || "$cmd" == *"$dir "* ]]
}
# signal SIG PID: the process group when PID leads one (kube-up's setsid), else PID alone.
signal() {
    local pgid
    pgid="$(awk '{print $5}' "/proc/$2/stat" 2>/dev/null || true)"
    if [[ "$pgid" == "$2" && "$pgid" != "$(awk '{print $5}' /proc/$$/stat)" ]]; then
        kill "-$1" -- "-$2" 2>/dev/null || true
    else
        kill "-$1" "$2" 2>/dev/null || true
    fi
}

# Stopped in tiers, clients first: the API server shuts down in about a second while etcd
# is up, but hangs until SIGKILL when etcd has gone first.
tier() {
    case $1 in
        etcd) echo 3 ;;
        kube-apiserver) echo 2 ;;
        *) echo 1 ;;
    esac
}

names=()
pids=()
while read -r name pid _; do
    [[ -n "${name:-}" ]] || continue
    if ours "$pid"; then
        names+=("$name")
        pids+=("$pid")
    fi
done <"$dir/pids"

if [[ ${#pids[@]} -eq 0 ]]; then
    say "nothing running for $dir"
    exit 0
fi

# running [TIER]: the names and PIDs (of that tier) still running.
running() {
    local i left=()
    for i in "${!pids[@]}"; do
        [[ -z "${1:-}" || "$(tier "${names[$i]}")" == "$1" ]] || continue
        ours "${pids[$i]}" && left+=("${names[$i]}(${pids[$i]})")
    done
    echo "${left[*]-}"
}
# wait_gone SECONDS [TIER]: polls until none (of that tier) runs; true if none does.
wait_gone() {
    local deadline=$((SECONDS + $1))
    while [[ -n "$(running "${2:-}")" ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

say "stopping ${names[*]}"
for t in 1 2 3; do
    for i in "${!pids[@]}"; do
        if [[ "$(tier "${names[$i]}")" == "$t" ]]; then signal TERM "${pids[$i]}"; fi
    done
    wait_gone "$term_deadline" "$t" || break
done
if [[ -n "$(running)" ]]; then
    say "still running after ${term_deadline}s, sending SIGKILL: $(running)"
    for pid in "${pids[@]}"; do ours "$pid" && signal KILL "$pid"; done
    if ! wait_gone 10; then
        say "could not stop: $(running)"
        exit 1
    fi
fi
say "stopped"
