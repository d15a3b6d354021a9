"""Gateway CPU per request, variant against variant, in one run (issue 6, variants 1-5).

Every gateway runs `--concurrency 1` pinned to CPU 0; the backend Envoy and wrk share CPU 1.
CPU time is utime+stime of the gateway process from /proc/<pid>/stat, per request counted by
Envoy's `http.ingress.downstream_rq_total`. After a warm-up (V8 and LuaJIT tier up), the
variants are measured in alternating rounds (forward, then reversed, which cancels a linear
drift). Each variant's median is reported, and each ratio twice: the median of the per-round
ratios (the two variants measured minutes apart at most, so slow changes on a shared machine
cancel; this is the one judged against the targets) and the ratio of the medians."""

from __future__ import annotations

import base64
import hashlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import envoy, load, procs
from .table_server import TableServer

GATEWAY_CPU = "0"
CLIENT_CPU = "1"
BENCH_DIR = Path(__file__).resolve().parents[1]
LUA_SOURCE = BENCH_DIR / "lua" / "sticky_split.lua"
WASM_DIR = procs.REPO / "target" / "wasm32-unknown-unknown" / "release"
VEER_WASM = WASM_DIR / "veer_filter.wasm"
# veer built with a 4096-slot memory of verified cookies instead of its 256 (`make bench` builds
# it with the feature `verified-memory-4096`): what growing the memory would buy.
VEER_WASM_4096 = WASM_DIR / "veer_filter_verified_memory_4096.wasm"
EMPTY_WASM = WASM_DIR / "veer_bench_empty_filter.wasm"
PROBE_WASM = WASM_DIR / "veer_bench_probe_filter.wasm"

COOKIE_NAME = "flagger-cookie"
# A fixed 32-byte signing key: the benchmark needs valid MACs, not a secret.
SIGNING_KEY = base64.b64encode(b"veer-bench-cookie-signing-key-32").decode()
REVISION = "7f9c2ba"
WEIGHT_BP = 3000


def veer_route(**extra) -> dict:
    """The benchmark's route: a signed affinity cookie, one override, two A/B rules (the
    Flagger tutorial's Firefox regex and a path prefix), 30% to the canary."""
    route = {
        "name": "bench/app",
        "hosts": ["app.example.com"],
        "weight": WEIGHT_BP,
        "revision": REVISION,
        "overrides": [{"match": {"headers": {"x-canary": {"exact": "always"}}}, "variant": "canary"}],
        "match": [
            {"headers": {"user-agent": {"regex": ".*Firefox.*"}}},
            {"uri": {"prefix": "/api/"}},
        ],
        "sessionAffinity": {"cookieName": COOKIE_NAME, "maxAge": 86400, "sameSite": "Lax"},
    }
    route.update(extra)
    return route


def veer_plugin_config(signed: bool = True, response_metrics: bool = False, **route_changes) -> dict:
    """Variant 3 runs the configuration the Istio manifests ship: `responseMetrics: false`,
    since Istio's own metrics count each variant there. Variant 3r turns them on."""
    config: dict = {
        "responseMetrics": response_metrics,
        "table": {"generation": 1, "routes": [veer_route(**route_changes)]},
    }
    if signed:
        config["cookieSigning"] = {"keys": [SIGNING_KEY]}
    return config


# What veer reads for the benchmark's route, one host call each: the route lookup, the client
# headers it must remove if present, the override, the A/B rule, the cookie and the request
# id a new user's bucket comes from.
SINGLE_VALUE_HEADERS = (
    ":authority", ":path", "x-veer-route", "x-veer-mirror", "x-canary", "user-agent", "cookie", "x-request-id",
)


# The fewest reads any route needs: `:authority` and `:path` to find it, and the two client
# headers veer removes when present. A route without overrides, A/B rules or cookies (or any
# route at weight 0 without them) needs no more.
FEWEST_HEADERS = (":authority", ":path", "x-veer-route", "x-veer-mirror")


def ablations() -> list["Variant"]:
    """What the missed ratios are made of, in the same run. 3a is veer with the decision taken
    away (the host calls and the route lookup remain). The probes (bench/probe-filter) are
    the empty filter plus nothing but host calls: one clock read, four clock reads, and
    veer's own request-side calls (all headers in one call, then the route header)."""
    wasm = lambda cfg: [envoy.wasm_filter("veer", VEER_WASM, cfg)]  # noqa: E731
    probe = lambda plan: [envoy.wasm_filter("probe", PROBE_WASM, plan)]  # noqa: E731
    return [
        Variant(
            "veer-noroute",
            "3a. veer, no route for the host (plumbing only)",
            envoy.header_routes(),
            wasm(veer_plugin_config(hosts=["other.example.com"])),
        ),
        Variant("probe-clock", "2a. probe: one host call (clock read)", envoy.header_routes(), probe("request=clock")),
        Variant(
            "probe-clock4",
            "2b. probe: four host calls (clock reads)",
            envoy.header_routes(),
            probe("request=clock,clock,clock,clock"),
        ),
        Variant(
            "probe-headers",
            "2c. probe: all headers, set route header (veer's calls on a canary request)",
            envoy.header_routes(),
            probe("request=headers,route"),
        ),
        Variant(
            "probe-headers-only",
            "2d. probe: all headers only (veer's calls on a primary request)",
            envoy.header_routes(),
            probe("request=headers"),
        ),
        Variant(
            "probe-setcookie",
            "2f. probe: add a Set-Cookie to every response (veer: 1 in 5)",
            envoy.header_routes(),
            probe("response=setcookie"),
            fixed_set_cookie=True,
        ),
        # The alternative to 2d (issue 13): one proxy_get_header_map_value per header the
        # benchmark's route needs, veer's two presence checks included.
        Variant(
            "probe-single-values",
            "2e. probe: 8 single header reads instead (the route's headers)",
            envoy.header_routes(),
            probe("request=" + ",".join("get:" + h for h in SINGLE_VALUE_HEADERS)),
        ),
        Variant(
            "probe-fewest-values",
            "2g. probe: 4 single header reads (the fewest any route needs)",
            envoy.header_routes(),
            probe("request=" + ",".join("get:" + h for h in FEWEST_HEADERS)),
        ),
        # What two of veer's own parts cost without any host work around them: the request
        # counter (one proxy_increment_metric per request) and one HMAC-SHA256 of a cookie's
        # MAC input (veer verifies one per returning request it does not remember, and signs
        # one per new user).
        # A release's host calls and routing at 30% without veer's work: all headers, and the
        # route header set to canary on 3 requests in 10, which then go to the canary cluster.
        Variant(
            "probe-release",
            "2m. probe: all headers, canary route header on 3 in 10 (a release's calls)",
            envoy.header_routes(),
            probe("request=headers,canary30"),
            splits=True,
        ),
        Variant("probe-counter", "2h. probe: one counter increment", envoy.header_routes(), probe("request=counter")),
        # veer-core's decision alone, inside Envoy's V8 (bench/decision-v8's canned requests of
        # the 1,000-user mix): the pure work the `decision` section times in Node.
        Variant(
            "probe-decide-unsigned",
            "2n. probe: veer-core's decision, unsigned cookies (no host call)",
            envoy.header_routes(),
            probe("request=veer:1"),
        ),
        Variant(
            "probe-decide-signed",
            "2s. probe: veer-core's decision, signed cookies (no host call)",
            envoy.header_routes(),
            probe("request=veer:2"),
        ),
        Variant("probe-hmac", "2k. probe: one HMAC-SHA256 (a cookie's MAC)", envoy.header_routes(), probe("request=hmac")),
        # The floor that decides (issue 13): veer's job for this one route written out by hand,
        # with veer's own kind of header read (one buffer, scanned in place; 2d's SDK read makes a
        # pair of strings per header) and nothing general (bench/probe-filter `by_hand`).
        # Checked like veer before it is timed: a 30% split, a cookie for every new user, sticky.
        Variant(
            "probe-byhand",
            "2p. probe: veer's job for this route by hand (unsigned; the floor)",
            envoy.header_routes(),
            probe("request=byhand;response=byhand"),
            sets_cookies=True,
            splits=True,
            zipf=True,
        ),
    ]


def wasm_identity(path: Path) -> dict:
    """Which build was measured: other work may rebuild the filter between runs."""
    data = path.read_bytes()
    return {
        "path": str(path.relative_to(procs.REPO)),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest()[:16],
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime)),
    }


@dataclass
class Variant:
    key: str
    title: str
    routes: list[dict]
    filters: list[dict]
    sets_cookies: bool = False
    splits: bool = False
    clusters: list[dict] = field(default_factory=list)
    # A probe that adds the same Set-Cookie to every response (2f): checked, not collected.
    fixed_set_cookie: bool = False
    # Also measured in the second mix (100,000 Zipf-distributed returning users).
    zipf: bool = False


# The live-table variant's controller: the bench's table server serving veer's table. Its poll
# is held (30 s, then 304 and a new poll) and the table never changes, the state between
# weight changes: what the propagation machinery (the lease, the notice queues, the tick)
# costs when nothing happens.
CONTROLLER_CLUSTER = "veer-controller"


def live_variant(table_server: TableServer) -> Variant:
    config = veer_plugin_config()
    config["controller"] = {"cluster": CONTROLLER_CLUSTER, "authority": CONTROLLER_CLUSTER, "timeoutMs": 30000}
    return Variant(
        "veer-live",
        "3l. veer, live table (controller configured, poll held, no change)",
        envoy.header_routes(),
        [envoy.wasm_filter("veer", VEER_WASM, config)],
        sets_cookies=True,
        splits=True,
        clusters=[envoy.static_cluster(CONTROLLER_CLUSTER, table_server.port)],
    )


def variants(include_veer: bool, ablation: bool = False, table_server: TableServer | None = None) -> list[Variant]:
    out = [
        Variant("none", "1. no filter (header route only)", envoy.header_routes(), [], zipf=True),
        Variant(
            "empty-wasm",
            "2. empty proxy-wasm filter",
            envoy.header_routes(),
            [envoy.wasm_filter("empty", EMPTY_WASM, None)],
            zipf=True,
        ),
    ]
    if include_veer:
        out.append(
            Variant(
                "veer",
                "3. veer (full decision, request metrics: the Istio config)",
                envoy.header_routes(),
                [envoy.wasm_filter("veer", VEER_WASM, veer_plugin_config())],
                sets_cookies=True,
                splits=True,
                zipf=True,
            )
        )
        if VEER_WASM_4096.exists():
            out.append(
                Variant(
                    "veer-4096",
                    "3m. veer with a 4096-slot cookie memory (not shipped)",
                    envoy.header_routes(),
                    [envoy.wasm_filter("veer", VEER_WASM_4096, veer_plugin_config())],
                    sets_cookies=True,
                    splits=True,
                    zipf=True,
                )
            )
        out.append(
            Variant(
                "veer-response-metrics",
                "3r. veer + response metrics (responseMetrics: true)",
                envoy.header_routes(),
                [envoy.wasm_filter("veer", VEER_WASM, veer_plugin_config(response_metrics=True))],
                sets_cookies=True,
                splits=True,
            )
        )
        if table_server is not None:
            out.append(live_variant(table_server))
        # Issue 13's two states besides a release in progress: the route at weight 0 (between
        # releases: no canary, no cookie handed out), and unsigned cookies (what the Lua
        # filter can do, so the two compare like for like).
        out.append(
            Variant(
                "veer-idle",
                "3i. veer, route at weight 0 (between releases)",
                envoy.header_routes(),
                [envoy.wasm_filter("veer", VEER_WASM, veer_plugin_config(weight=0))],
            )
        )
        out.append(
            Variant(
                "veer-unsigned",
                "3u. veer, unsigned cookies",
                envoy.header_routes(),
                [envoy.wasm_filter("veer", VEER_WASM, veer_plugin_config(signed=False))],
                sets_cookies=True,
                splits=True,
                zipf=True,
            )
        )
        if ablation:
            out += ablations()
    out += [
        Variant(
            "lua",
            "4. Lua sticky split",
            envoy.header_routes(),
            [envoy.lua_filter(LUA_SOURCE)],
            sets_cookies=True,
            splits=True,
            zipf=True,
        ),
        Variant("weighted", "5. native weighted_clusters", envoy.weighted_routes(WEIGHT_BP // 100), [], splits=True),
    ]
    return out


@dataclass
class Sample:
    cpu_us_per_rq: float
    rps: float
    gateway_util: float
    requests: int


# The two traffic mixes. "1k": 1 request in 5 from a new user, the rest from 1,000 returning
# users in a fixed cycle. "zipf": 100,000 returning users with Zipf-distributed visits (s = 1),
# 1 request in 20 from a new user (issue 13): the realistic returning population that decides
# the size of veer's memory of verified cookies.
MIXES = ("1k", "zipf")
ZIPF_USERS = 100_000
ZIPF_NEW_ONE_IN = 20
# Whose cookies each variant replays in the Zipf mix: its own where it hands them out, veer's
# (same key and route) for the 4096-slot build, veer's for the variants without cookies.
ZIPF_COOKIE_SOURCES = ("veer", "veer-unsigned", "lua")


@dataclass
class VariantResult:
    variant: Variant
    mix: str = "1k"
    samples: list[Sample] = field(default_factory=list)

    @property
    def key(self) -> str:
        return result_key(self.variant.key, self.mix)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


def _request(gw: envoy.Envoy, cookie: str | None = None) -> tuple[str, dict]:
    headers = {"Host": "app.example.com", "User-Agent": "bench-check/1.0"}
    if cookie:
        headers["Cookie"] = cookie
    status, hdrs, body = procs.http_get(gw.url() + "/api/items", headers=headers)
    if status != 200:
        raise procs.BenchError(f"{gw.name}: GET /api/items answered {status}")
    return body.decode().strip(), {k.lower(): v for k, v in hdrs.items()}


# Returning users: more distinct cookies than veer's verified-cookie memory (256 slots per
# worker) holds, so a returning request almost never finds its cookie remembered and the
# HMAC runs (the many-users case; a browser session's repeated cookie would hit).
RETURNING_USERS = 1000


# Each variant's gateway Envoy is named (and its config file is called) this plus the variant's
# key; bench/profile.py finds the gateways by it.
GATEWAY_PREFIX = "gw-"


def result_key(variant_key: str, mix: str) -> str:
    return variant_key if mix == "1k" else f"{variant_key}@{mix}"


def collect_many_cookies(gw: envoy.Envoy, out: Path, n: int = ZIPF_USERS) -> Path:
    """`n` distinct affinity cookies from the gateway, as new users get them (wrk, one thread:
    100,000 over Python's HTTP client would take minutes per gateway)."""
    done = out.with_name(out.name + ".done")
    done.unlink(missing_ok=True)
    load.wrk(
        gw.url(),
        script="collect_cookies.lua",
        duration_s=120,
        connections=32,
        cpus=CLIENT_CPU,
        env={"VEER_BENCH_COOKIES_OUT": str(out), "VEER_BENCH_COOKIES_WANT": str(n)},
        stop_when=done.exists,
    )
    lines = [line for line in out.read_text().splitlines() if line]
    # The Lua filter's cookie holds 32 bits (8 hex digits of x-request-id), so 100,000 users
    # share a value about once (the birthday bound); veer's hold 128 bits.
    if len(lines) != n or len(set(lines)) < n - n // 10_000:
        raise procs.BenchError(f"{gw.name}: collected {len(lines)} cookies ({len(set(lines))} distinct), wanted {n}")
    return out


def check_and_collect_cookies(v: Variant, gw: envoy.Envoy, n: int = RETURNING_USERS) -> list[str]:
    """Prove the variant does its job before timing it (a variant that silently routes
    nothing would look cheap), and collect `n` affinity cookies from it."""
    seen: dict[str, int] = {}
    cookies: list[str] = []
    for _ in range(n):
        who, hdrs = _request(gw)
        seen[who] = seen.get(who, 0) + 1
        sc = hdrs.get("set-cookie")
        if sc:
            cookies.append(sc.split(";", 1)[0])
    if v.splits and not (0.22 < seen.get("canary", 0) / n < 0.38):
        raise procs.BenchError(f"{v.key}: expected a ~30% canary split over {n} requests, got {seen}")
    if not v.splits and seen.get("canary", 0):
        raise procs.BenchError(f"{v.key}: expected primary only, got {seen}")
    if v.fixed_set_cookie:
        if len(cookies) != n:
            raise procs.BenchError(f"{v.key}: {len(cookies)} of {n} responses had its Set-Cookie")
        return []
    if v.sets_cookies:
        if len(cookies) != n:
            raise procs.BenchError(f"{v.key}: {len(cookies)} of {n} new users got a Set-Cookie")
        # A returning user keeps their variant and gets no new cookie.
        for c in cookies[:20]:
            first, hdrs1 = _request(gw, c)
            again, hdrs2 = _request(gw, c)
            if first != again or "set-cookie" in hdrs1 or "set-cookie" in hdrs2:
                raise procs.BenchError(f"{v.key}: cookie {c} is not sticky or was replaced")
    elif cookies:
        raise procs.BenchError(f"{v.key}: unexpected Set-Cookie {cookies[0]}")
    return cookies


def measure(gw: envoy.Envoy, duration_s: float, script: str, env: dict[str, str]) -> Sample:
    rq0 = gw.downstream_rq_total()
    cpu0 = procs.CpuTimes.of(gw.pid).seconds
    t0 = time.monotonic()
    res = load.wrk(gw.url(), script=script, duration_s=duration_s, cpus=CLIENT_CPU, env=env)
    t1 = time.monotonic()
    cpu1 = procs.CpuTimes.of(gw.pid).seconds
    rq1 = gw.downstream_rq_total()
    n = rq1 - rq0
    if n <= 0:
        raise procs.BenchError(f"{gw.name}: no requests counted")
    if res.non_2xx or res.socket_errors > 0.001 * res.requests:
        raise procs.BenchError(
            f"{gw.name}: {res.non_2xx} non-2xx and {res.socket_errors} socket errors in {res.requests} requests"
        )
    return Sample(
        cpu_us_per_rq=(cpu1 - cpu0) / n * 1e6,
        rps=n / (t1 - t0),
        gateway_util=(cpu1 - cpu0) / (t1 - t0),
        requests=n,
    )


# Kept by --variants whatever is asked: the ratios' references and the source of the cookies.
ALWAYS_MEASURED = ("none", "empty-wasm", "veer", "lua")


def run(
    *,
    rounds: int,
    duration_s: float,
    warmup_s: float,
    ablation: bool = True,
    only: set[str] | None = None,
    mixes: tuple[str, ...] | None = None,
    log=print,
) -> dict:
    work = procs.OUT / "cpu"
    include_veer = VEER_WASM.exists()
    for wasm in (EMPTY_WASM, PROBE_WASM):
        if not wasm.exists():
            raise procs.BenchError(
                f"{wasm} missing: cargo build -p veer-bench-empty-filter -p veer-bench-probe-filter "
                "--target wasm32-unknown-unknown --release"
            )
    measured_wasm = wasm_identity(VEER_WASM) if include_veer else None
    backend = envoy.start_backend(work, CLIENT_CPU)
    table_server = TableServer({"generation": 1, "routes": [veer_route()]}) if include_veer else None
    results: list[VariantResult] = []
    gateways: dict[str, envoy.Envoy] = {}
    cookie_files: dict[str, Path] = {}
    zipf_cookies: dict[str, Path] = {}
    try:
        chosen = [
            v
            for v in variants(include_veer, ablation, table_server)
            if only is None or v.key in only or v.key in ALWAYS_MEASURED
        ]
        for v in chosen:
            gateways[v.key] = envoy.start(
                f"{GATEWAY_PREFIX}{v.key}",
                {"ingress": (v.routes, v.filters)},
                envoy.backend_clusters(backend) + v.clusters,
                cpus=GATEWAY_CPU,
                concurrency=1,
                workdir=work,
            )
            cookies = check_and_collect_cookies(v, gateways[v.key])
            if cookies:
                cookie_files[v.key] = work / f"cookies-{v.key}.txt"
                cookie_files[v.key].write_text("\n".join(cookies) + "\n")
            results.append(VariantResult(v))
        unknown = set(mixes or ()) - set(MIXES)
        if unknown:
            raise procs.BenchError(f"unknown mix(es) {sorted(unknown)}; choose from {MIXES}")
        if mixes is not None and "1k" not in mixes:
            raise procs.BenchError("the 1k mix always runs: the probes and the cookie checks use it")
        zipf = mixes is None or "zipf" in mixes
        for v in chosen:
            if zipf and v.zipf and v.key in ZIPF_COOKIE_SOURCES:
                log(f"  collecting {ZIPF_USERS:,} cookies from {v.key}")
                zipf_cookies[v.key] = collect_many_cookies(gateways[v.key], work / f"cookies-zipf-{v.key}.txt")
        results += [VariantResult(v, "zipf") for v in chosen if zipf and v.zipf]
        # Variants without cookies of their own get veer's (or Lua's) so that every variant
        # sees the same request bytes.
        default_cookies = cookie_files.get("veer") or cookie_files["lua"]
        default_zipf = zipf_cookies.get("veer") or zipf_cookies.get("lua")

        def traffic(r: VariantResult, seed: int) -> tuple[str, dict[str, str]]:
            if r.mix == "zipf":
                return "returning_and_new_users.lua", {
                    "VEER_BENCH_MIX": "zipf",
                    "VEER_BENCH_COOKIES": str(zipf_cookies.get(r.variant.key, default_zipf)),
                    "VEER_BENCH_NEW_EVERY": str(ZIPF_NEW_ONE_IN),
                    # The same users in the same order for every variant of a round.
                    "VEER_BENCH_SEED": str(seed),
                }
            cookies = cookie_files.get(r.variant.key, default_cookies)
            return "returning_and_new_users.lua", {"VEER_BENCH_COOKIES": str(cookies), "VEER_BENCH_NEW_EVERY": "5"}

        for r in results:
            log(f"  warm-up {r.key} ({warmup_s:g}s)")
            measure(gateways[r.variant.key], warmup_s, *traffic(r, 1000))
        for i in range(rounds):
            order = results if i % 2 == 0 else list(reversed(results))
            for r in order:
                s = measure(gateways[r.variant.key], duration_s, *traffic(r, i + 1))
                r.samples.append(s)
                log(
                    f"  round {i + 1}/{rounds} {r.key:<16} {s.cpu_us_per_rq:7.1f} us/rq"
                    f"  {s.rps:8.0f} rq/s  gateway CPU {s.gateway_util * 100:5.1f}%"
                )
        live_polls = table_server.polls if table_server else None
    finally:
        for gw in gateways.values():
            gw.stop()
        backend.stop()
        if table_server is not None:
            table_server.close()

    med = {r.key: r.median("cpu_us_per_rq") for r in results}
    by_key = {r.key: r for r in results}

    def paired(key: str, ref: str) -> list[float]:
        """Per-round ratios (same round, measured back to back): their spread shows the noise."""
        return [
            round(a.cpu_us_per_rq / b.cpu_us_per_rq, 3)
            for a, b in zip(by_key[key].samples, by_key[ref].samples)
        ]

    def spread(ratios: list[float]) -> dict:
        """Median and interquartile range of per-round ratios."""
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2]}

    # What the live-table machinery costs per request: the same filter, config and traffic,
    # with and without a controller, paired round by round.
    live = {}
    if "veer-live" in by_key and "veer" in by_key:
        ratios = paired("veer-live", "veer")
        live = {"live_vs_static": spread(ratios), "paired_live_vs_static": ratios}
    # What a larger memory of verified cookies would buy: the same filter and traffic with 4096
    # slots instead of 256, paired round by round, in each mix.
    memory = {}
    for mix in MIXES:
        large, shipped = result_key("veer-4096", mix), result_key("veer", mix)
        if large in by_key and shipped in by_key:
            ratios = paired(large, shipped)
            memory[mix] = {"spread": spread(ratios), "paired": ratios}
    out = {
        **live,
        "memory_4096_vs_256": memory,
        # The build the gateways loaded at start; a rebuild during the run is noted.
        "veer_wasm": measured_wasm,
        "veer_wasm_rebuilt_during_run": bool(measured_wasm and wasm_identity(VEER_WASM) != measured_wasm),
        "rounds": rounds,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "new_user_share": 0.2,
        "veer_measured": include_veer,
        # Polls the live-table variant's gateway made over the whole section (one held poll
        # per 30 s, plus the first).
        "live_variant_polls": live_polls,
        "variants": [_variant_summary(r, by_key, med, paired, spread) for r in results],
        "mixes": {
            "1k": {"returning_users": RETURNING_USERS, "new_user_share": 0.2},
            "zipf": {"returning_users": ZIPF_USERS, "zipf_s": 1.0, "new_user_share": 1 / ZIPF_NEW_ONE_IN},
        },
    }
    return out


def _variant_summary(r: VariantResult, by_key: dict, med: dict, paired, spread) -> dict:
    """One measured (variant, mix): its medians and its ratios to the references measured in
    the same mix."""
    ref = {name: result_key(name, r.mix) for name in ("none", "empty-wasm", "lua")}
    out = {
        "key": r.key,
        "variant": r.variant.key,
        "mix": r.mix,
        "title": r.variant.title,
        "cpu_us_per_rq_median": med[r.key],
        "cpu_us_per_rq_samples": [round(s.cpu_us_per_rq, 2) for s in r.samples],
        "rps_median": r.median("rps"),
        "gateway_util_median": r.median("gateway_util"),
    }
    for name, field_name in (("none", "none"), ("empty-wasm", "empty_wasm"), ("lua", "lua")):
        if ref[name] not in by_key:
            continue
        out[f"vs_{field_name}"] = med[r.key] / med[ref[name]]
        out[f"paired_median_vs_{field_name}"] = spread(paired(r.key, ref[name]))
        out[f"paired_vs_{field_name}"] = paired(r.key, ref[name])
    return out
