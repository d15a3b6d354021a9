"""Split accuracy: the canary share veer produces at 1%, 5%, 30% and 50%, counted by the
gateway's own upstream clusters over at least 100,000 requests per weight.

Two kinds of traffic: new visitors (no cookie; the bucket comes from x-request-id) and
distinct users (every request has its own x-user-id, the route's stickyKey, so the bucket
is the sticky hash of (revision, user)). One gateway serves all weights, one route per
host, so the runs differ only in the Host header."""

from __future__ import annotations

import math

from . import cpu, envoy, load, procs

WEIGHTS_BP = [100, 500, 3000, 5000]


def _routes() -> list[dict]:
    routes = []
    for w in WEIGHTS_BP:
        routes.append({"name": f"split/w{w}", "hosts": [f"w{w}.split"], "weight": w, "revision": "split-r1"})
        routes.append(
            {
                "name": f"split/k{w}",
                "hosts": [f"k{w}.split"],
                "weight": w,
                "revision": "split-r1",
                "stickyKey": {"header": "x-user-id"},
            }
        )
    return routes


def run(requests: int = 100_000, log=print) -> dict:
    if not cpu.VEER_WASM.exists():
        raise procs.BenchError(f"{cpu.VEER_WASM} missing: make wasm")
    work = procs.OUT / "split"
    backend = envoy.start_backend(work, None)
    config = {"table": {"generation": 1, "routes": _routes()}}
    gw = envoy.start(
        "gw-split",
        {"ingress": (envoy.header_routes(), [envoy.wasm_filter("veer", cpu.VEER_WASM, config)])},
        envoy.backend_clusters(backend),
        cpus=None,
        concurrency=2,
        workdir=work,
    )
    threads = 2
    runs = []
    try:
        for traffic, prefix, user_ids in (("new visitors", "w", "0"), ("distinct users (stickyKey)", "k", "1")):
            for w in WEIGHTS_BP:
                before = gw.upstream_rq()
                res = load.wrk(
                    gw.url(),
                    script="split_traffic.lua",
                    duration_s=600,
                    threads=threads,
                    connections=32,
                    cpus=None,
                    env={
                        "VEER_BENCH_HOST": f"{prefix}{w}.split",
                        "VEER_BENCH_USER_IDS": user_ids,
                    },
                    stop_when=lambda b=before: sum(gw.upstream_rq().values()) - sum(b.values()) >= requests,
                )
                after = gw.upstream_rq()
                canary = after["canary"] - before["canary"]
                total = canary + after["primary"] - before["primary"]
                if total < requests or res.non_2xx:
                    raise procs.BenchError(f"split {traffic} {w}: {total} requests counted, {res.non_2xx} non-2xx")
                p = w / 10_000
                share = canary / total
                runs.append(
                    {
                        "traffic": traffic,
                        "weight_bp": w,
                        "requests": total,
                        "canary": canary,
                        "canary_share": share,
                        "error_points": (share - p) * 100,
                        # Binomial sampling noise alone, for judging the error.
                        "sigma_points": math.sqrt(p * (1 - p) / total) * 100,
                    }
                )
                log(f"  {traffic:<28} weight {w / 100:>4g}%  {share * 100:7.3f}% of {total}")
    finally:
        gw.stop()
        backend.stop()
    return {"runs": runs}
