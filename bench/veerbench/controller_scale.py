"""Controller scale: N canaries analysed every 10s against a real Prometheus while G simulated
gateways long-poll the routing table. Reports the controller's CPU share of one core
(utime+stime over wall time, /proc/<pid>/stat) and its peak RSS (VmHWM).

Prometheus scrapes a small exporter serving Istio's `istio_requests_total` and
`istio_request_duration_milliseconds_bucket` for every canary's workload, so every pass of
every canary runs its two builtin queries (success rate, p99) on real data. Canaries are
started the way local mode starts them (a first revision becomes primary, a second starts a
run) and step the weight by 1 up to 50, so they stay in Progressing for the whole window.
The simulated gateways behave like the filter's poller (filter/wasm/src/poll.rs and root.rs) with
its default endpoint (`timeoutMs` 30000, `pollMs` 1000): `GET /v1/table?after=<applied>&waitMs=30000`
with the `x-veer-gateway` and `x-veer-generation` headers, and the poller's pacing: after a 200
with a newer table the next poll starts at once, from the response callback (the long-poll
itself bounds the rate: the controller answers only when it serves a new generation, a few
per second under load); after a 304 or a 200 with nothing newer, no sooner than `pollMs` after
the previous poll started: at once from the response callback when that time has passed (a
held poll that ran out), else on the filter's 1 s tick; after a failure,
`pollMs * 2^(failures-1)` later (at most 10 s), on the tick."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import math
import re
import shutil
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import procs

NAMESPACE = "bench"
INTERVAL = "10s"
LE = ["5", "10", "25", "50", "100", "250", "500", "1000", "+Inf"]


def canary_yaml(name: str) -> str:
    return f"""apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {name}
  service:
    hosts:
      - {name}.example.com
    port: 9898
  analysis:
    interval: {INTERVAL}
    threshold: 5
    maxWeight: 50
    stepWeight: 1
    metrics:
      - name: request-success-rate
        interval: 1m
        thresholdRange:
          min: 99
      - name: request-duration
        interval: 30s
        thresholdRange:
          max: 500
"""


class IstioExporter:
    """Serves Istio-shaped request metrics for every workload, growing with time: 100 rq/s,
    0.1% 5xx, latencies mostly under 50 ms."""

    def __init__(self, workloads: list[str]):
        self.workloads = workloads
        self.t0 = time.monotonic()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def render(self) -> str:
        t = time.monotonic() - self.t0 + 1
        ok, bad = 100 * t, 0.1 * t
        # Cumulative share of requests at or under each bucket bound.
        cdf = [0.2, 0.5, 0.8, 0.95, 0.99, 0.999, 1.0, 1.0, 1.0]
        out = ["# TYPE istio_requests_total counter", "# TYPE istio_request_duration_milliseconds histogram"]
        for w in self.workloads:
            lbl = f'reporter="destination",destination_workload="{w}",destination_workload_namespace="{NAMESPACE}"'
            out.append(f'istio_requests_total{{{lbl},response_code="200"}} {ok:.0f}')
            out.append(f'istio_requests_total{{{lbl},response_code="503"}} {bad:.0f}')
            total = ok + bad
            for le, share in zip(LE, cdf):
                out.append(f'istio_request_duration_milliseconds_bucket{{{lbl},le="{le}"}} {total * share:.0f}')
            out.append(f"istio_request_duration_milliseconds_count{{{lbl}}} {total:.0f}")
        return "\n".join(out) + "\n"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# The filter's poller constants (filter/wasm/src/poll.rs, root.rs) and its default endpoint.
POLL_MS = 1000
TIMEOUT_MS = 30_000
CALL_GRACE_MS = 5_000
MAX_BACKOFF_MS = 10_000
TICK_MS = 1000


class SimulatedGateway(threading.Thread):
    """The filter's poller, without Envoy: the same request, headers and pacing (see the module
    docstring). Like the filter, it takes a 200's generation as applied only if it is newer."""

    def __init__(self, index: int, port: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.index, self.port, self.stop = index, port, stop
        self.generation = 0
        self.polls = 0
        self.tables = 0
        self.not_modified = 0
        self.bytes = 0
        self.errors = 0
        self.failures = 0
        # Each gateway's tick has its own phase, as separate Envoys' would.
        self.tick_phase = (index * 7919 % TICK_MS) / 1000

    def _next_tick(self, not_before: float) -> None:
        """Waits until the first tick at or after `not_before`: the filter starts polls on its tick."""
        tick = TICK_MS / 1000
        at = self.tick_phase + math.ceil(max(0.0, not_before - self.tick_phase) / tick) * tick
        rest = at - time.monotonic()
        if rest > 0:
            self.stop.wait(rest)

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=(TIMEOUT_MS + CALL_GRACE_MS) / 1000)

    def run(self) -> None:
        conn = self._connect()
        next_at = 0.0
        while not self.stop.is_set():
            if next_at > time.monotonic():
                # Not due at the answer: the filter leaves it to the tick.
                self._next_tick(next_at)
            if self.stop.is_set():
                break
            started = time.monotonic()
            self.polls += 1
            try:
                conn.request(
                    "GET",
                    f"/v1/table?after={self.generation}&waitMs={TIMEOUT_MS}",
                    headers={"x-veer-gateway": f"bench-gw-{self.index}", "x-veer-generation": str(self.generation)},
                )
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    m = re.search(rb'"generation"\s*:\s*(\d+)', body)
                    if not m:
                        raise http.client.HTTPException("a 200 without a table generation")
                    self.tables += 1
                    self.bytes += len(body)
                    self.failures = 0
                    if int(m.group(1)) > self.generation:
                        self.generation = int(m.group(1))
                        next_at = 0.0  # a new table: ask for the next one at once, not on the tick
                    else:
                        next_at = started + POLL_MS / 1000
                    continue
                if resp.status != 304:
                    raise http.client.HTTPException(f"HTTP {resp.status}")
                self.not_modified += 1
                self.failures = 0
                next_at = started + POLL_MS / 1000
            except (OSError, http.client.HTTPException):
                self.errors += 1
                self.failures += 1
                delay_ms = min(POLL_MS * 2 ** min(self.failures - 1, 20), max(MAX_BACKOFF_MS, POLL_MS))
                next_at = time.monotonic() + delay_ms / 1000
                conn.close()
                conn = self._connect()


def _json(url: str, data: dict | None = None, timeout: float = 10):
    req = urllib.request.Request(
        url,
        data=json.dumps(data).encode() if data is not None else None,
        headers={"content-type": "application/json"},
        method="POST" if data is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body else None


def _phases(api: str) -> dict[str, int]:
    got = _json(f"{api}/v1/canaries")
    items = got if isinstance(got, list) else got.get("canaries", [])
    out: dict[str, int] = {}
    for c in items:
        phase = c.get("phase") or c.get("status", {}).get("phase") or "?"
        out[phase] = out.get(phase, 0) + 1
    return out


def prometheus_queries(prom_url: str) -> int:
    """Instant queries Prometheus has answered (its own /metrics): proof the passes query it."""
    _, _, body = procs.http_get(f"{prom_url}/metrics", timeout=5)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def controller_binary() -> Path:
    """The release controller `make bench` built before the run. Not rebuilt here: in a
    shared checkout a rebuild mid-run takes minutes and would measure other code."""
    path = procs.REPO / "target" / "release" / "veer"
    if not path.exists():
        raise procs.BenchError(f"{path} missing: cargo build --release -p veer-controller --bins")
    return path


def run(canaries: int = 1000, gateways: int = 100, measure_s: float = 60, log=print) -> dict:
    binary = controller_binary()
    prometheus = procs.require_binary("prometheus", "apt-get install -y prometheus")
    work = procs.OUT / "controller"
    shutil.rmtree(work, ignore_errors=True)
    specs = work / "canaries"
    specs.mkdir(parents=True)
    names = [f"app-{i:04d}" for i in range(canaries)]
    for n in names:
        (specs / f"{n}.yaml").write_text(canary_yaml(n))

    exporter = IstioExporter(names)
    prom_port = procs.free_port()
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, evaluation_interval: 1m}\n"
        "scrape_configs:\n"
        f"  - job_name: istio\n    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n"
    )
    prom_log = work / "prometheus.log"
    prom = procs.spawn(
        [
            prometheus,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        cpus=None,
        log=prom_log,
    )
    prom_url = f"http://127.0.0.1:{prom_port}"
    ctl = None
    stop = threading.Event()
    try:
        def series_ready() -> bool:
            q = urllib.request.quote("count(rate(istio_requests_total[1m]))")
            got = _json(f"{prom_url}/api/v1/query?query={q}", timeout=5)
            res = got.get("data", {}).get("result", [])
            return bool(res) and float(res[0]["value"][1]) >= 2 * canaries

        procs.wait_until("prometheus has rates for every workload", series_ready, 90, prom, prom_log)

        api_port = procs.free_port()
        api = f"http://127.0.0.1:{api_port}"
        ctl_log = work / "controller.log"
        ctl = procs.spawn(
            [
                str(binary), "controller",
                "--canaries", str(specs),
                "--prometheus", prom_url,
                "--listen", f"127.0.0.1:{api_port}",
                "--state", str(work / "state.json"),
            ],
            cpus=None,
            log=ctl_log,
        )
        procs.wait_until("controller /healthz", lambda: procs.http_get(f"{api}/healthz")[0] == 200, 60, ctl, ctl_log)
        procs.wait_until(
            f"controller loaded {canaries} canaries", lambda: sum(_phases(api).values()) >= canaries, 120, ctl, ctl_log
        )
        for rev in ("v1", "v2"):
            # Concurrent, as a CI system posting many rollouts would: each answer waits for
            # the state file's commit, and the controller batches concurrent commits.
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda n: _json(f"{api}/v1/canaries/{NAMESPACE}/{n}/revision", {"revision": rev}, 60), names))
            if rev == "v1":
                procs.wait_until(
                    "first revisions become primary",
                    lambda: _phases(api).get("Initialized", 0) >= canaries,
                    120, ctl, ctl_log,
                )
        procs.wait_until(
            "runs progressing",
            lambda: _phases(api).get("Progressing", 0) >= canaries * 0.95,
            120, ctl, ctl_log,
        )
        gws = [SimulatedGateway(i, api_port, stop) for i in range(gateways)]
        for g in gws:
            g.start()
        log(f"  {canaries} canaries progressing, {gateways} gateways polling; warm-up 10s, then {measure_s:g}s")
        time.sleep(10)  # warm-up: a full analysis interval before measuring, not synchronization
        tables0 = sum(g.tables for g in gws)
        polls0 = sum(g.polls for g in gws)
        not_modified0 = sum(g.not_modified for g in gws)
        bytes0 = sum(g.bytes for g in gws)
        gen0 = max(g.generation for g in gws)
        q0 = prometheus_queries(prom_url)
        cpu0 = procs.CpuTimes.of(ctl.pid).seconds
        t0 = time.monotonic()
        time.sleep(measure_s)  # the measurement window itself
        cpu1 = procs.CpuTimes.of(ctl.pid).seconds
        t1 = time.monotonic()
        queries = prometheus_queries(prom_url) - q0
        tables = sum(g.tables for g in gws) - tables0
        polls = sum(g.polls for g in gws) - polls0
        not_modified = sum(g.not_modified for g in gws) - not_modified0
        table_bytes = sum(g.bytes for g in gws) - bytes0
        gen1 = max(g.generation for g in gws)
        errors = sum(g.errors for g in gws)
        # A second window without gateways: the difference is what serving the table costs.
        stop.set()
        procs.wait_until("simulated gateways stopped", lambda: not any(g.is_alive() for g in gws), 40)
        cpu2 = procs.CpuTimes.of(ctl.pid).seconds
        t2 = time.monotonic()
        time.sleep(measure_s / 2)  # the second measurement window
        cpu3 = procs.CpuTimes.of(ctl.pid).seconds
        t3 = time.monotonic()
        rss = procs.peak_rss_mb(ctl.pid)
        phases = _phases(api)
        if ctl.poll() is not None:
            raise procs.BenchError(f"controller exited during the run:\n{ctl_log.read_text()[-3000:]}")
    finally:
        stop.set()
        if ctl is not None:
            procs.stop(ctl)
        procs.stop(prom)
        exporter.close()
    result = {
        "canaries": canaries,
        "interval": INTERVAL,
        "gateways": gateways,
        "measure_s": t1 - t0,
        "cpu_share_of_core": (cpu1 - cpu0) / (t1 - t0),
        "cpu_share_without_gateways": (cpu3 - cpu2) / (t3 - t2),
        "measure_without_gateways_s": t3 - t2,
        "peak_rss_mb": rss,
        "phases_at_end": phases,
        "table_generations_in_window": gen1 - gen0,
        "tables_served_in_window": tables,
        "table_polls_in_window": polls,
        "table_304s_in_window": not_modified,
        "table_bytes_served_in_window": table_bytes,
        "gateway_poll_errors": errors,
        "prometheus_queries_in_window": queries,
    }
    log(
        f"  controller CPU {result['cpu_share_of_core'] * 100:.2f}% of one core "
        f"({result['cpu_share_without_gateways'] * 100:.2f}% once the gateways stop), peak RSS {rss:.1f} MB; "
        f"{gen1 - gen0} generations, {polls} polls, {tables} tables served, {queries} Prometheus queries "
        f"in {t1 - t0:.0f}s; "
        f"phases {phases}"
    )
    return result
