"""Propagation: how long after the table source publishes a new generation every Envoy
worker decides with it. The gateway runs `--concurrency 2`; probe connections are spread over
both workers (checked with Envoy's per-worker listener stats), and the generation each
request was decided with is read from `x-veer-decision: <route>;<variant>;<reason>;g=<N>`.
The delay of one change is from the publish instant to the first response carrying the new
generation on the last connection to see it.

The source is a minimal table server speaking the controller's long-poll contract
(table_server.py): publishing there is one function call with a precise instant, where the
real controller only publishes after an analysis pass. Before each change the benchmark waits
until the gateway's long-poll is being held (the steady state with a live gateway)."""

from __future__ import annotations

import http.client
import random
import re
import statistics
import time

from . import cpu, envoy, procs
from .table_server import TableServer

HOST = "prop.example.com"
GEN_RE = re.compile(r";g=(\d+)$")


def _table(generation: int) -> dict:
    return {
        "generation": generation,
        "routes": [
            {
                "name": "bench/prop",
                "hosts": [HOST],
                # The weight moves with every change, as a controller's steps would.
                "weight": 1000 + (generation % 9) * 1000,
                "revision": "prop-r1",
            }
        ],
    }


class Probe:
    """One persistent client connection to the gateway."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def generation(self) -> int:
        self.conn.request("GET", "/", headers={"Host": HOST})
        resp = self.conn.getresponse()
        resp.read()
        value = resp.getheader("x-veer-decision") or ""
        m = GEN_RE.search(value)
        if resp.status != 200 or not m:
            raise procs.BenchError(f"probe: status {resp.status}, x-veer-decision {value!r}")
        return int(m.group(1))


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q * (len(s) - 1))))
    return s[k]


def run(changes: int = 50, connections: int = 8, log=print) -> dict:
    if not cpu.VEER_WASM.exists():
        raise procs.BenchError(f"{cpu.VEER_WASM} missing: make wasm")
    work = procs.OUT / "propagation"
    server = TableServer(_table(1))
    backend = envoy.start_backend(work, None)
    config = {
        "decisionHeader": True,
        "controller": {"cluster": "veer-controller", "authority": "veer-controller", "timeoutMs": 30000},
        "table": _table(1),
    }
    workers = 2
    gw = envoy.start(
        "gw-prop",
        {"ingress": (envoy.header_routes(), [envoy.wasm_filter("veer", cpu.VEER_WASM, config)])},
        [*envoy.backend_clusters(backend), envoy.static_cluster("veer-controller", server.port)],
        cpus=None,
        concurrency=workers,
        workdir=work,
    )
    delays_ms: list[float] = []
    hold_waits_ms: list[float] = []
    try:
        probes = [Probe(gw.ports["ingress"]) for _ in range(connections)]
        for p in probes:
            p.generation()
        per_worker = gw.counters(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_active$")
        covered = sorted(k.split(".")[-2] for k, v in per_worker.items() if v > 0)
        if len(covered) < workers:
            raise procs.BenchError(f"probe connections reach only {covered} of {workers} workers: {per_worker}")

        def wait_all(gen: int, deadline_s: float) -> float:
            """Poll every probe until each has decided with `gen`; returns the instant the
            last one first did."""
            seen: dict[int, float] = {}
            end = time.monotonic() + deadline_s
            while len(seen) < len(probes):
                if time.monotonic() > end:
                    raise procs.BenchError(f"generation {gen} not on all workers after {deadline_s}s")
                for i, p in enumerate(probes):
                    if i in seen:
                        continue
                    g = p.generation()
                    if g >= gen:
                        seen[i] = time.perf_counter()
            return max(seen.values())

        # The initial table is the first generation the poll confirms.
        wait_all(1, 10)
        rng = random.Random(6)
        for gen in range(2, changes + 2):
            # Spacing at random phases of the filter's tick, so no change is systematically
            # lucky or unlucky. Then the steady state: the gateway's long-poll is held.
            time.sleep(rng.uniform(0.05, 0.25))
            t_hold = time.perf_counter()
            procs.wait_until("gateway long-poll held", lambda: server.waiting > 0, 10)
            hold_waits_ms.append((time.perf_counter() - t_hold) * 1000)
            t0 = server.publish(_table(gen))
            t_last = wait_all(gen, 10)
            delays_ms.append((t_last - t0) * 1000)
        answered = len(server.answered)
    finally:
        gw.stop()
        backend.stop()
        server.close()
    result = {
        "source": "bench table server (long-poll contract)",
        "workers": workers,
        "connections": connections,
        "changes": len(delays_ms),
        "p50_ms": statistics.median(delays_ms),
        "p99_ms": _percentile(delays_ms, 0.99),
        "max_ms": max(delays_ms),
        "min_ms": min(delays_ms),
        "delays_ms": [round(d, 2) for d in delays_ms],
        "wait_for_held_poll_ms_median": statistics.median(hold_waits_ms),
        "polls_answered_200": answered,
    }
    log(
        f"  {result['changes']} changes: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms (min {result['min_ms']:.1f})"
    )
    return result
