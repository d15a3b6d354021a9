"""Propagation: how long after the table source publishes a new generation every Envoy
worker decides with it. The gateway runs `--concurrency 2`, and again `--concurrency 4`; one
probe connection is pinned to each worker (which worker accepted it is read from Envoy's
per-worker listener stats), and the generation each request was decided with is read from
`x-veer-decision: <route>;<variant>;<reason>;g=<N>`. The delay of one change is from the
publish instant to the first response carrying the new generation on the last worker to
see it. With one probe per worker a sweep over all of them takes a few ms, not more.

Two sources of changes, each measured on its own gateway:
- the real controller (`veer controller`), whose analysis passes publish the changes. The
  filter paces its polls (`pollMs`, default 1000), so a change that comes soon after the
  previous one waits for the next poll: this is what an operator sees.
- the bench's table server (table_server.py), speaking the same long-poll contract, which
  publishes only while the gateway's poll is held: the filter's own share of the delay
  (controller answer -> shared data -> a notice on every worker's queue)."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import statistics
import shutil
import time
import urllib.request
from pathlib import Path

from . import cpu, envoy, procs
from .table_server import TableServer

HOST = "prop.example.com"
GEN_RE = re.compile(r";g=(\d+)$")
SOURCES = ("controller", "table-server")
WORKER_COUNTS = (2, 4)


def result_key(source: str, workers: int) -> str:
    """Where a run's result sits in the section's results: `controller`, `table-server` at
    --concurrency 2 (the keys of earlier runs), `controller-c4` etc. otherwise."""
    return source if workers == 2 else f"{source}-c{workers}"


RESULT_KEYS = tuple(result_key(s, w) for w in WORKER_COUNTS for s in SOURCES)


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
        self.conn.connect()

    def generation(self) -> int:
        self.conn.request("GET", "/", headers={"Host": HOST})
        resp = self.conn.getresponse()
        resp.read()
        value = resp.getheader("x-veer-decision")
        if resp.status == 200 and value is None:
            return 0  # no table with this route on this worker yet
        m = GEN_RE.search(value or "")
        if resp.status != 200 or not m:
            raise procs.BenchError(f"probe: status {resp.status}, x-veer-decision {value!r}")
        return int(m.group(1))


def _percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default). With 50 samples the
    nearest-rank p99 would simply be the maximum."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class TableServerSource:
    """Changes published through the bench's table server at random phases of the filter's
    1 s safety-net tick, each once the gateway's long-poll is held (the steady state with a
    live gateway)."""

    name = "bench table server (long-poll contract)"

    def __init__(self):
        self.server = TableServer(_table(1))
        self.port = self.server.port
        self.rng = random.Random(6)
        self.hold_waits_ms: list[float] = []

    def initial_table(self) -> dict | None:
        return _table(1)

    def current(self) -> int:
        return self.server.generation

    def next_change(self) -> tuple[int, float]:
        time.sleep(self.rng.uniform(0.05, 0.25))  # spacing, not synchronization
        t_hold = time.perf_counter()
        procs.wait_until("gateway long-poll held", lambda: self.server.waiting > 0, 10)
        self.hold_waits_ms.append((time.perf_counter() - t_hold) * 1000)
        # A random offset within one tick period (1 s, `TICK_MS` in filter/wasm/src/root.rs)
        # spreads the publishes over the phase of every worker's tick, so a delay that came
        # from the tick instead of the notice would show as up to 1 s; the poll stays held.
        time.sleep(self.rng.uniform(0, 1.0))
        gen = self.server.generation + 1
        return gen, self.server.publish(_table(gen))

    def details(self) -> dict:
        return {
            "wait_for_held_poll_ms_median": statistics.median(self.hold_waits_ms),
            "polls_answered_200": len(self.server.answered),
        }

    def close(self) -> None:
        self.server.close()


class ControllerSource:
    """The real controller (`veer controller`), running one canary without metrics at a 2s
    interval, so every pass steps the weight and publishes a generation; a new revision is
    posted whenever the run has finished. The publish instant is when the bench's own
    long-poll of /v1/table (held alongside the gateway's) returns the new generation."""

    name = "veer controller"

    def __init__(self, work: Path):
        from .controller_scale import controller_binary

        binary = controller_binary()
        self.conn: http.client.HTTPConnection | None = None
        specs = work / "canaries"
        shutil.rmtree(specs, ignore_errors=True)
        specs.mkdir(parents=True)
        (specs / "prop.yaml").write_text(
            f"""apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: prop
  namespace: bench
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: prop
  service:
    hosts:
      - {HOST}
    port: 9898
  analysis:
    interval: 2s
    threshold: 5
    maxWeight: 50
    stepWeight: 10
"""
        )
        state = work / "state.json"
        state.unlink(missing_ok=True)
        self.port = procs.free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        log = work / "controller.log"
        self.proc = procs.spawn(
            [
                str(binary), "controller",
                "--canaries", str(specs),
                "--prometheus", "http://127.0.0.1:9",  # no metrics in this canary
                "--listen", f"127.0.0.1:{self.port}",
                "--state", str(state),
            ],
            cpus=None,
            log=log,
        )
        procs.wait_until("controller /healthz", lambda: procs.http_get(f"{self.api}/healthz")[0] == 200, 60, self.proc, log)
        self.revision = 0
        self._post_revision()
        procs.wait_until("first revision applied", lambda: self._poll(0, 1000)[0] > 0, 30, self.proc, log)
        self._post_revision()
        self.generation, _ = self._poll(0, 1000)

    def _post_revision(self) -> None:
        self.revision += 1
        req = urllib.request.Request(
            f"{self.api}/v1/canaries/bench/prop/revision",
            data=json.dumps({"revision": f"r{self.revision}"}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _poll(self, after: int, wait_ms: int) -> tuple[int, float]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=wait_ms / 1000 + 10)
        self.conn.request("GET", f"/v1/table?after={after}&waitMs={wait_ms}", headers={"x-veer-gateway": "bench-observer"})
        resp = self.conn.getresponse()
        body = resp.read()
        t = time.perf_counter()
        if resp.status == 200:
            return int(json.loads(body)["generation"]), t
        return after, t

    def initial_table(self) -> dict | None:
        return None

    def current(self) -> int:
        return self.generation

    def next_change(self) -> tuple[int, float]:
        for _ in range(3):
            gen, t = self._poll(self.generation, 5000)
            if gen > self.generation:
                self.generation = gen
                return gen, t
            self._post_revision()  # the run finished: start another
        raise procs.BenchError("the controller published no new generation in 15s")

    def details(self) -> dict:
        return {"revisions_posted": self.revision}

    def close(self) -> None:
        procs.stop(self.proc)


# Each root context logs `applied table generation N` when it installs a table (root.rs).
APPLIED_RE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\[(\d+)\]\[info\]\[wasm\].*applied table generation (\d+)"
)


def applied_times(log_path: Path) -> dict[int, dict[str, float]]:
    """generation -> {Envoy thread id: wall time it installed the table}, from the gateway's
    log (millisecond timestamps, the machine's local time)."""
    out: dict[int, dict[str, float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = APPLIED_RE.match(line)
        if m:
            stamp, thread, gen = m.groups()
            t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000
            out.setdefault(int(gen), {}).setdefault(thread, t)
    return out


def _summary(xs: list[float]) -> dict:
    return {"p50_ms": statistics.median(xs), "p99_ms": _percentile(xs, 0.99), "max_ms": max(xs)} if xs else {}


def pin_probes(gw, workers: int, port: int) -> list[Probe]:
    """One probe connection on each worker: connections are opened one at a time, and the
    per-worker `downstream_cx_total` that moved says which worker accepted each."""
    pattern = r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$"
    by_worker: dict[str, Probe] = {}
    for _ in range(50 * workers):
        if len(by_worker) == workers:
            return list(by_worker.values())
        before = gw.counters(pattern)
        probe = Probe(port)
        probe.generation()  # the first request: the worker has accepted and decided it
        after = gw.counters(pattern)
        moved = [k.split(".")[-2] for k, v in after.items() if v > before.get(k, 0)]
        if len(moved) == 1 and moved[0] not in by_worker:
            by_worker[moved[0]] = probe
        else:
            probe.conn.close()
    raise procs.BenchError(f"probe connections reached only {sorted(by_worker)} of {workers} workers")


def run(changes: int = 50, source: str = "controller", workers: int = 2, log=print) -> dict:
    if not cpu.VEER_WASM.exists():
        raise procs.BenchError(f"{cpu.VEER_WASM} missing: make wasm")
    procs.prioritise_self()
    work = procs.OUT / f"propagation-{source}-c{workers}"
    work.mkdir(parents=True, exist_ok=True)
    src = ControllerSource(work) if source == "controller" else TableServerSource()
    backend = envoy.start_backend(work, None)
    config: dict = {
        "decisionHeader": True,
        "controller": {"cluster": "veer-controller", "authority": "veer-controller", "timeoutMs": 30000},
    }
    if src.initial_table() is not None:
        config["table"] = src.initial_table()
    gw = None
    delays_ms: list[float] = []
    try:
        gw = envoy.start(
            "gw-prop",
            {"ingress": (envoy.header_routes(), [envoy.wasm_filter("veer", cpu.VEER_WASM, config)])},
            [*envoy.backend_clusters(backend), envoy.static_cluster("veer-controller", src.port)],
            cpus=None,
            concurrency=workers,
            workdir=work,
            wasm_log_level="info",
        )
        probes = pin_probes(gw, workers, gw.ports["ingress"])

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
                    if p.generation() >= gen:
                        seen[i] = time.perf_counter()
            return max(seen.values())

        wait_all(src.current(), 20)
        per_worker = gw.counters(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_active$")
        covered = sorted(k.split(".")[-2] for k, v in per_worker.items() if v > 0)
        if len(covered) < workers:
            raise procs.BenchError(f"probe connections reach only {covered} of {workers} workers: {per_worker}")
        load_start = os.getloadavg()
        # perf_counter -> wall clock, to line the probes up with the gateway's log.
        wall_offset = time.time() - time.perf_counter()
        published: dict[int, tuple[float, float]] = {}
        for _ in range(changes):
            gen, t0 = src.next_change()
            t_seen = wait_all(gen, 10)
            delays_ms.append((t_seen - t0) * 1000)
            published[gen] = (t0 + wall_offset, t_seen + wall_offset)
        details = src.details()
    finally:
        if gw is not None:
            gw.stop()
            log_path = gw.log
        backend.stop()
        src.close()
    # Where each delay went, from the log (1 ms resolution): publish -> the poller applied it
    # (controller answer, validation, compile), the poller -> the last thread to apply it (the
    # notice and the other workers' compile), the last thread -> the probes saw it.
    applied = applied_times(log_path)
    to_poller, notice_hop, to_probe, to_all, threads = [], [], [], [], set()
    for gen, (t_pub, t_seen) in published.items():
        times = applied.get(gen, {})
        if not times:
            continue
        threads.add(len(times))
        first, last = min(times.values()), max(times.values())
        to_poller.append((first - t_pub) * 1000)
        notice_hop.append((last - first) * 1000)
        to_probe.append((t_seen - last) * 1000)
        to_all.append((last - t_pub) * 1000)
    result = {
        "source": src.name,
        "workers": workers,
        "connections": len(probes),
        "workers_covered": covered,
        "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg(),
        "changes": len(delays_ms),
        "p50_ms": statistics.median(delays_ms),
        "p99_ms": _percentile(delays_ms, 0.99),
        "max_ms": max(delays_ms),
        "min_ms": min(delays_ms),
        "delays_ms": [round(d, 2) for d in delays_ms],
        "threads_applying": sorted(threads),
        "publish_to_poller_applied": _summary(to_poller),
        "poller_to_last_thread_applied": _summary(notice_hop),
        "last_thread_applied_to_probe": _summary(to_probe),
        # The issue's measure without the probes' own HTTP round trips: from the publish until
        # the last Envoy thread has installed the table (every later decision uses it).
        "publish_to_last_thread_applied": _summary(to_all),
        "publish_to_last_thread_applied_ms": [round(x, 1) for x in to_all],
        "poller_to_last_thread_ms": [round(x, 1) for x in notice_hop],
        **details,
    }
    log(
        f"  --concurrency {workers}, {src.name}: {result['changes']} changes: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms (min {result['min_ms']:.1f})"
    )
    for part in (
        "publish_to_poller_applied", "poller_to_last_thread_applied", "last_thread_applied_to_probe",
        "publish_to_last_thread_applied",
    ):
        x = result[part]
        if x:
            log(f"    {part.replace('_', ' ')}: p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, max {x['max_ms']:.1f} ms")
    return result
