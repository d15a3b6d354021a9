#!/usr/bin/env python3
"""`make bench`: veer's benchmark suite. Runs each section, prints a table of medians and
ratios, checks them against the targets (issues 6 and 16), and writes the raw results as JSON to
target/bench/results.json. Not part of `make test`: it takes minutes and wants a quiet machine.

    python3 bench/run.py                      # everything (about 32 minutes on 2 cores)
    python3 bench/run.py --sections cpu,size  # some sections
    python3 bench/run.py --quick              # shorter runs, for trying the harness
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from veerbench import procs, report  # noqa: E402

SECTIONS = ["size", "decision", "cpu", "split", "propagation", "controller"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    ap.add_argument("--quick", action="store_true", help="short runs: checks the harness, numbers are rough")
    ap.add_argument("--rounds", type=int, default=None, help="CPU rounds (default 15, quick 2)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per CPU measurement (default 3)")
    ap.add_argument("--mixes", default=None, help="CPU: only these traffic mixes (comma-separated, from 1k,zipf)")
    ap.add_argument(
        "--variants",
        default=None,
        help="CPU: only these variant keys (comma-separated; the references none, empty-wasm, veer and lua always run)",
    )
    ap.add_argument("--output", default=str(procs.OUT / "results.json"))
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")

    results: dict = {
        "command": "make bench" if not sys.argv[1:] else "python3 bench/run.py " + " ".join(sys.argv[1:]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg(),
        },
        "sections": {},
        "errors": {},
    }
    procs.OUT.mkdir(parents=True, exist_ok=True)
    for section in sections:
        print(f"\n== {section}", flush=True)
        try:
            results["sections"][section] = _run_section(section, args)
        except Exception as e:  # one failed section must not hide the others' numbers
            traceback.print_exc()
            results["errors"][section] = f"{type(e).__name__}: {e}"
        Path(args.output).write_text(json.dumps(results, indent=2))
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    Path(args.output).write_text(json.dumps(results, indent=2))
    print()
    print(report.render(results))
    print(f"raw results: {args.output}")
    return 1 if results["errors"] else 0


def _run_section(section: str, args) -> dict:
    if section == "cpu":
        from veerbench import cpu

        return cpu.run(
            rounds=args.rounds or (2 if args.quick else 15),
            duration_s=args.duration or 3,
            warmup_s=2 if args.quick else 5,
            only=set(args.variants.split(",")) if args.variants else None,
            mixes=tuple(args.mixes.split(",")) if args.mixes else None,
        )
    if section == "decision":
        from veerbench import decision

        return decision.run()
    if section == "split":
        from veerbench import split

        return split.run(requests=20_000 if args.quick else 100_000)
    if section == "size":
        from veerbench import size

        return size.run()
    if section == "propagation":
        from veerbench import propagation

        n = 10 if args.quick else 50
        out = {}
        # Keys: "controller" and "table-server" at --concurrency 2 (as in earlier runs), with
        # "-c4" for --concurrency 4.
        for workers in propagation.WORKER_COUNTS:
            for source in propagation.SOURCES:
                key = propagation.result_key(source, workers)
                try:
                    out[key] = propagation.run(changes=n, source=source, workers=workers)
                except procs.BenchError as e:
                    print(f"propagation via {source} at --concurrency {workers} failed: {e}", flush=True)
                    out[f"{key}_error"] = str(e)
        if not any(k in out for k in propagation.RESULT_KEYS):
            raise procs.BenchError("propagation: no source worked")
        return out
    if section == "controller":
        from veerbench import controller_scale

        return controller_scale.run(
            canaries=100 if args.quick else 1000,
            gateways=20 if args.quick else 100,
            measure_s=20 if args.quick else 60,
        )
    raise AssertionError(section)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
