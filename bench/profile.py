#!/usr/bin/env python3
"""Where each gateway variant's CPU goes, by sampling: runs the CPU section for the given
variants (one long round, so each variant carries load for `--duration` seconds at a time),
samples whichever benchmark gateway is busy with `perf record -e cpu-clock`, and charges the
samples to the code they landed in: Envoy's own binary, the kernel, libc, or `[JIT]`. In a
proxy-wasm gateway `[JIT]` is the filter's Wasm code as V8 compiled it (Envoy's V8 runs with
Liftoff off, so it is TurboFan code from the start), plus the SDK's dispatch; for the Lua
variant it is LuaJIT's traces.

What the probes cannot split, this can: a filter's excess over another is either in its own
code (`[JIT]`) or in what its host calls make Envoy do. Absolute µs come from the run's own
µs/request, so the shares of variants measured minutes apart compare only roughly.

    python3 bench/profile.py                                   # veer, 3u, 2p and the references
    python3 bench/profile.py --variants veer-unsigned,probe-byhand --duration 30

Not part of `make bench` (sampling perturbs what the bench measures). Needs `perf`
(Debian: `apt-get install linux-perf`) and permission to sample this user's processes
(`kernel.perf_event_paranoid` <= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from veerbench.cpu import GATEWAY_PREFIX, result_key  # noqa: E402
from veerbench.procs import BenchError, CpuTimes, require_binary  # noqa: E402

# Seconds of CPU use sampled to find the busy gateway, then seconds recorded from it.
PICK_S = 1.0
RECORD_S = 4


def gateways() -> dict[int, str]:
    """pid -> variant key of every CPU-section gateway running (its config is gw-<key>.json)."""
    out = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"envoy" not in argv[0]:
            continue
        for arg in argv[1:]:
            name = Path(arg.decode(errors="replace")).name
            if name.startswith(GATEWAY_PREFIX) and name.endswith(".json"):
                out[pid] = name[len(GATEWAY_PREFIX) : -len(".json")]
    return out


def cpu_seconds(pid: int) -> float:
    try:
        return CpuTimes.of(pid).seconds
    except OSError:
        return 0.0  # it exited


def busiest() -> tuple[int, str] | None:
    gws = gateways()
    before = {pid: cpu_seconds(pid) for pid in gws}
    time.sleep(PICK_S)
    used = {pid: cpu_seconds(pid) - t for pid, t in before.items()}
    pid = max(used, key=used.get, default=None)
    return (pid, gws[pid]) if pid is not None and used[pid] > 0 else None


def dso_shares(data: Path) -> dict[str, float]:
    """Percent of samples per DSO, with V8's per-thread `[JIT] tid N` folded into `[JIT]`."""
    report = subprocess.run(
        ["perf", "report", "-q", "-g", "none", "--no-children", "--sort", "dso", "-i", str(data)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shares: dict[str, float] = {}
    for line in report.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].endswith("%"):
            dso = "[JIT]" if parts[1].startswith("[JIT]") else parts[1].strip()
            shares[dso] = shares.get(dso, 0.0) + float(parts[0].rstrip("%"))
    return shares


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="veer-unsigned,probe-byhand", help="bench/run.py variant keys (the references always run)")
    ap.add_argument("--duration", type=float, default=25, help="seconds of load per variant")
    ap.add_argument("--mix", default="1k", choices=["1k", "zipf"], help="the traffic mix (one: the gateways serve each mix in turn)")
    args = ap.parse_args()
    # A recording that straddles two variants' turns, or a turn's start (V8 compiling the
    # module, wrk connecting), is charged to one variant: turns must hold several recordings.
    if args.duration < 3 * (PICK_S + RECORD_S):
        ap.error(f"--duration must be at least {3 * (PICK_S + RECORD_S):.0f} s (three recordings per turn)")
    try:
        require_binary("perf", "apt-get install linux-perf")
    except BenchError as e:
        print(f"profile: {e}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="veer-profile-") as tmp:
        results = Path(tmp) / "run.json"
        bench = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/run.py"), "--sections", "cpu", "--rounds", "1",
             "--duration", str(args.duration), "--variants", args.variants, "--mixes", args.mix,
             "--output", str(results)],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        samples: dict[str, list[dict[str, float]]] = {}
        n = 0
        while bench.poll() is None:
            found = busiest()
            if found is None:
                continue
            pid, key = found
            data = Path(tmp) / f"{n}.data"
            n += 1
            rec = subprocess.run(
                ["perf", "record", "-q", "-F", "999", "-e", "cpu-clock", "-p", str(pid), "-o", str(data),
                 "--", "sleep", str(RECORD_S)],
                capture_output=True,
                text=True,
            )
            if rec.returncode != 0 and not data.exists():
                bench.kill()
                print(f"profile: perf record -p {pid} failed: {rec.stderr.strip()}", file=sys.stderr)
                return 1
            try:
                samples.setdefault(result_key(key, args.mix), []).append(dso_shares(data))
            except subprocess.CalledProcessError:
                continue  # the gateway exited mid-record (end of its turn)
        if bench.returncode != 0:
            print(f"profile: bench/run.py exited {bench.returncode}", file=sys.stderr)
            return 1
        cpu = json.loads(results.read_text())["sections"]["cpu"]

    us = {v["key"]: v["cpu_us_per_rq_median"] for v in cpu["variants"]}
    cols = ["[JIT]", "envoy", "[kernel.kallsyms]", "libc.so.6"]
    print(f"{'variant':<24} {'rec':>3} {'us/rq':>6}  " + "  ".join(f"{c:>18}" for c in cols))
    for key, recs in sorted(samples.items(), key=lambda kv: us.get(kv[0], 0)):
        if key not in us:
            continue
        cells = []
        for c in cols:
            share = statistics.median(r.get(c, 0.0) for r in recs)
            cells.append(f"{share:5.1f}% {share / 100 * us[key]:5.2f} us")
        print(f"{key:<24} {len(recs):>3} {us[key]:6.1f}  " + "  ".join(f"{c:>18}" for c in cells))
    print("(median share of each recording's samples; us = share x the run's us/request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
