"""veer-core's per-request work timed in V8 (bench/decision-v8, run by Node), and the memory of
verified cookies modelled on the Zipf mix: the parts of veer's cost below what the gateway
measurement resolves (issue 13's attribution and its memory decision).

Node's V8 is not Envoy's (Envoy 1.40 embeds its own), so these are the parts' sizes relative
to each other and to the gateway's microseconds, not the gateway's exact numbers."""

from __future__ import annotations

import bisect
import itertools
import json
import random
import subprocess

from . import procs
from .cpu import WASM_DIR, ZIPF_NEW_ONE_IN, ZIPF_USERS

BENCH_DIR = procs.REPO / "bench" / "decision-v8"
MODULES = {
    "shipped (256 slots)": WASM_DIR / "veer_bench_decision_v8.wasm",
    "4096 slots": WASM_DIR / "veer_bench_decision_v8_memory_4096.wasm",
}
SLOT_SIZES = (256, 1024, 4096, 16384)
SLOT_BYTES = 80  # filter/core/src/keys.rs: size_of::<Option<Verified>>()


def remembered_share(slots: int, requests: int = 400_000, seed: int = 1) -> float:
    """The share of returning requests whose cookie a direct-mapped memory of `slots` slots
    remembers, for the Zipf mix (ZIPF_USERS users, s = 1, 1 in ZIPF_NEW_ONE_IN new), with a
    uniform hash standing in for the filter's xxh3 slot."""
    rng = random.Random(seed)
    cdf = list(itertools.accumulate(1 / k for k in range(1, ZIPF_USERS + 1)))
    slot_of = [rng.getrandbits(64) % slots for _ in range(ZIPF_USERS)]
    memory = [-1] * slots
    hits = returning = 0
    for _ in range(requests):
        if rng.random() < 1 / ZIPF_NEW_ONE_IN:
            continue
        user = bisect.bisect_left(cdf, rng.random() * cdf[-1])
        returning += 1
        slot = slot_of[user]
        if memory[slot] == user:
            hits += 1
        else:
            memory[slot] = user
    return hits / returning


def run() -> dict:
    node = procs.require_binary("node", "apt-get install -y nodejs (Node 18 or newer)")
    timings = {}
    for label, module in MODULES.items():
        if not module.exists():
            raise procs.BenchError(
                f"{module} missing: make bench builds it (cargo build -p veer-bench-decision-v8 "
                "--target wasm32-unknown-unknown --release)"
            )
        out = subprocess.run(
            [node, str(BENCH_DIR / "run.mjs"), str(module), label],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            raise procs.BenchError(f"node {BENCH_DIR / 'run.mjs'} {module}: {out.stderr}{out.stdout}")
        timings[label] = json.loads(out.stdout)
    memory = [
        {"slots": n, "bytes_per_worker": n * SLOT_BYTES, "remembered_share": remembered_share(n)}
        for n in SLOT_SIZES
    ]
    return {"v8": timings, "memory_model": memory}
