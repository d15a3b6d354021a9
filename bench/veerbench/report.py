"""The printed summary of a benchmark run: one table per section and the targets (issue 6,
propagation's from issue 16), each marked met, missed or not measured. A target is never shown as met without a number."""

from __future__ import annotations

from .cpu import WEIGHT_BP, result_key as mix_key

SIZE_TARGET_BYTES = 400_000  # "400 KB", read strictly as 400,000 bytes


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every target (issue 6; propagation: issue 16)."""
    s = results.get("sections", {})
    out: list[tuple[str, str, str]] = []

    def add(name: str, value: float | None, limit: float, fmt: str, short_of: str | None = None) -> None:
        if value is None:
            out.append((name, "not measured", "NOT MEASURED"))
            return
        if short_of:
            # Measured, but not under the target's conditions (e.g. --quick): no verdict.
            out.append((name, fmt.format(value), f"NOT MEASURED ({short_of})"))
            return
        ok = value <= limit
        out.append((name, fmt.format(value), "met" if ok else "MISSED"))

    cpu = {v["key"]: v for v in s.get("cpu", {}).get("variants", [])}
    # Judged on the median of per-round ratios (cpu.py); both veer configurations are judged.
    for key, label in (("veer", "veer"), ("veer-response-metrics", "veer + response metrics")):
        v = cpu.get(key)
        if key != "veer" and v is None:
            continue
        ratio = lambda ref: v and _paired(v, ref)  # noqa: E731
        add(f"{label} / no filter <= 1.20 (CPU per request)", ratio("none"), 1.20, "{:.3f}")
        add(f"{label} / empty Wasm <= 1.05", ratio("empty_wasm"), 1.05, "{:.3f}")
        add(f"{label} / Lua <= 1.00", ratio("lua"), 1.00, "{:.3f}")

    # Issue 13's targets: between releases, during one, and like for like with Lua; judged
    # in the 1,000-user mix, and shown for the Zipf mix beside it.
    for key, ref, limit, label in (
        ("veer-idle", "empty_wasm", 1.03, "veer at weight 0 / empty Wasm <= 1.03 (issue 13)"),
        ("veer", "empty_wasm", 1.10, "veer during a release / empty Wasm <= 1.10 (issue 13)"),
        ("veer-unsigned", "lua", 1.00, "veer unsigned / Lua <= 1.00 (issue 13)"),
        ("veer", "lua", 1.05, "veer during a release / Lua <= 1.05 (issue 13)"),
        ("veer@zipf", "empty_wasm", 1.10, "Zipf mix: veer during a release / empty Wasm <= 1.10"),
        ("veer-unsigned@zipf", "lua", 1.00, "Zipf mix: veer unsigned / Lua <= 1.00"),
        ("veer@zipf", "lua", 1.05, "Zipf mix: veer during a release / Lua <= 1.05"),
    ):
        v = cpu.get(key)
        add(label, v and _paired(v, ref), limit, "{:.3f}")
    # Against what any filter doing veer's job must spend (floors(), below): the by-hand filter
    # (probe 2p) where the run measured it, else the host calls alone.
    fl = floors(cpu, _mixes(s.get("cpu", {})))
    for key, floor_key, label in (
        ("veer", "release-signed@1k", "veer during a release / floor <= 1.03 (issue 13)"),
        ("veer-unsigned", "release-unsigned@1k", "veer unsigned / floor <= 1.03 (issue 13)"),
        ("veer-idle", "idle", "veer at weight 0 / floor <= 1.03 (issue 13)"),
        ("veer@zipf", "release-signed@zipf", "Zipf mix: veer during a release / floor <= 1.03"),
        ("veer-unsigned@zipf", "release-unsigned@zipf", "Zipf mix: veer unsigned / floor <= 1.03"),
    ):
        by_hand = fl.get(f"{floor_key}-byhand")
        v, f = cpu.get(key), by_hand or fl.get(floor_key)
        which = " [by-hand floor, 2p]" if by_hand else " [host calls only]" if f else ""
        add(label + which, v and f and _paired(v, "empty_wasm") / f, 1.03, "{:.3f}")

    # Issue 16's targets (issue 6 had 100 and 250 ms), judged through the real controller at
    # --concurrency 2 and 4.
    for key, workers in (("controller", 2), ("controller-c4", 4)):
        prop = (s.get("propagation") or {}).get(key)
        few = prop and prop["changes"] < 50 and f"{prop['changes']} changes"
        add(f"propagation p99 <= 15 ms (--concurrency {workers})", prop and prop["p99_ms"], 15, "{:.1f} ms", few)
        add(f"propagation max <= 50 ms (--concurrency {workers})", prop and prop["max_ms"], 50, "{:.1f} ms", few)

    split = s.get("split")
    worst = max((abs(r["error_points"]) for r in split["runs"]), default=None) if split else None
    small = split and min(r["requests"] for r in split["runs"]) < 100_000 and "< 100,000 requests"
    add("split accuracy within +-0.5 points", worst, 0.5, "worst {:.3f} points", small)

    size = s.get("size")
    add("veer_filter.wasm <= 400 KB", size and size.get("veer_bytes"), SIZE_TARGET_BYTES, "{:,.0f} bytes")

    ctl = s.get("controller")
    fewer = ctl and ctl["canaries"] < 1000 and f"{ctl['canaries']} canaries"
    add("controller <= 5% of one core (1,000 canaries)", ctl and ctl["cpu_share_of_core"] * 100, 5.0, "{:.2f}%", fewer)
    add("controller peak RSS <= 100 MB", ctl and ctl["peak_rss_mb"], 100, "{:.1f} MB", fewer)
    return out


def _mixes(cpu_section: dict) -> dict:
    """The CPU section's traffic mixes; runs recorded before the Zipf mix had only the
    1,000-user one, with its new users' share at the top level."""
    return cpu_section.get("mixes") or {"1k": {"new_user_share": cpu_section.get("new_user_share", 0.2)}}


def floors(cpu: dict, mixes: dict) -> dict[str, float]:
    """What any filter doing veer's job on this Envoy must spend, as a share of the empty
    filter, built from the probes of the same run (each probe's excess over the empty filter
    is one part):
    - during a release at 30%, unsigned: read the request headers on every request (2d), write
      the route header on the 3 in 10 sent to the canary (2c - 2d), add a Set-Cookie for each
      new user (2f - 1), and send 3 in 10 to a second cluster (Envoy's own 70/30 split over
      the header route alone, 5 - 1);
    - signed: the same plus one HMAC for each new user's cookie (2k - 1). Verifying a returning
      user's cookie is left out: a filter could remember every cookie it verified;
    - between releases: the cheaper of the pairs read (2d) and the four single reads every
      route needs (2g); nothing is written;
    - by hand (`...-byhand`): these floors leave out the decision's own computation, which any
      filter doing the job must also do. Probe 2p is that filter for the benchmark's one route,
      with nothing general in it; it is the floor the targets are judged against.
    Keys `release-unsigned@<mix>`, `release-signed@<mix>`, `idle`,
    `release-unsigned-2m@<mix>` where probe 2m measured the release's calls in one filter, and
    `release-unsigned@<mix>-byhand`, `release-signed@<mix>-byhand` where 2p ran.
    `mixes` is the CPU section's record of its traffic mixes (their new users' share); the
    canary's share is the benchmark route's weight."""

    def r(key: str) -> float | None:
        v = cpu.get(key)
        return v and _paired(v, "empty_wasm")

    out: dict[str, float] = {}
    d, c, f, k, g, split, none = (
        r(key)
        for key in (
            "probe-headers-only",
            "probe-headers",
            "probe-setcookie",
            "probe-hmac",
            "probe-fewest-values",
            "weighted",
            "none",
        )
    )
    if d:
        out["idle"] = min(d, g) if g else d
    new_share = {mix: m["new_user_share"] for mix, m in mixes.items()}
    canary_share = WEIGHT_BP / 10_000
    if d and c and f and split and none:
        for mix, new in new_share.items():
            unsigned = d + canary_share * (c - d) + new * (f - 1) + (split - none)
            out[f"release-unsigned@{mix}"] = unsigned
            if k:
                out[f"release-signed@{mix}"] = unsigned + new * (k - 1)
    # The same release floor with its header read, writes and second cluster measured in one
    # probe (2m) rather than composed from three.
    m = r("probe-release")
    if m and f:
        for mix, new in new_share.items():
            out[f"release-unsigned-2m@{mix}"] = m + new * (f - 1)
    # The floor that also decides: veer's job for the benchmark's route written out by hand in
    # one filter (2p: the same header read, the least computation that makes the decision, the
    # writes, the second cluster and the new users' Set-Cookie, all measured together). Signed,
    # it adds the new users' HMAC as above.
    for mix, new in new_share.items():
        p = r(mix_key("probe-byhand", mix))
        if p:
            out[f"release-unsigned@{mix}-byhand"] = p
            if k:
                out[f"release-signed@{mix}-byhand"] = p + new * (k - 1)
    return out


def _paired(v: dict, ref: str) -> float:
    """Median of the per-round ratios; runs recorded before it existed fall back to the ratio
    of medians."""
    p = v.get(f"paired_median_vs_{ref}")
    return p["median"] if p else v[f"vs_{ref}"]


def render(results: dict) -> str:
    s = results.get("sections", {})
    parts: list[str] = [f"veer benchmarks, {results.get('started')} ({results.get('command')})"]
    m = results.get("machine", {})
    parts.append(f"machine: {m.get('cpus')} CPUs, {m.get('cpu_model')}, load at start {m.get('loadavg_at_start')}")

    if "decision" in s:
        d = s["decision"]
        rows = []
        for label, t in d["v8"].items():
            for p in t["parts"]:
                rows.append(
                    [label, p["part"], f"{p['returning_users']:,}", f"{p['us_per_request']:.3f}", f"{p['min']:.3f}-{p['max']:.3f}"]
                )
        v8 = next(iter(d["v8"].values()), {}).get("v8")
        parts.append(f"\nveer-core's per-request work in V8 {v8} (Node), microseconds per request (median of 9)")
        parts.append(_table(["module", "part", "returning users", "us/rq", "range"], rows))
        parts.append("Memory of verified cookies on the Zipf mix (modelled, direct-mapped, uniform hash):")
        parts.append(
            _table(
                ["slots", "bytes per worker", "returning cookies remembered"],
                [
                    [f"{m['slots']:,}", f"{m['bytes_per_worker'] / 1024:,.0f} KiB", f"{m['remembered_share'] * 100:.1f}%"]
                    for m in d["memory_model"]
                ],
            )
        )

    if "cpu" in s:
        c = s["cpu"]
        rows = [
            [
                v["title"],
                v.get("mix", "1k"),
                f"{v['cpu_us_per_rq_median']:.1f}",
                f"{min(v['cpu_us_per_rq_samples']):.1f}-{max(v['cpu_us_per_rq_samples']):.1f}",
                f"{v['rps_median']:.0f}",
                f"{v['gateway_util_median'] * 100:.0f}%",
                f"{_paired(v, 'none'):.3f}",
                f"{_paired(v, 'empty_wasm'):.3f}",
                f"{_paired(v, 'lua'):.3f}",
                f"{v['vs_none']:.3f} / {v['vs_empty_wasm']:.3f} / {v['vs_lua']:.3f}",
            ]
            for v in c["variants"]
        ]
        w = c.get("veer_wasm") or {}
        parts.append(
            f"\nveer build measured: {w.get('path')} {w.get('bytes', 0):,} bytes, sha256 {w.get('sha256')}, built {w.get('mtime')}"
            + (" (rebuilt by other work during the run; the gateways kept this one)" if c.get("veer_wasm_rebuilt_during_run") else "")
            if w else "\nveer build measured: none"
        )
        parts.append(
            f"Gateway CPU per request (median of {c['rounds']} rounds x {c['duration_s']:g}s, "
            f"{int(c['new_user_share'] * 100)}% new users); ratios are medians of per-round ratios, "
            f"the last column ratios of medians"
        )
        parts.append(
            _table(
                ["variant", "mix", "us/rq", "range", "rq/s", "gw CPU", "/none", "/empty", "/lua", "of medians"],
                rows,
            )
        )
        for v in c["variants"]:
            if v["key"] in ("veer", "veer-response-metrics"):
                parts.append(
                    f"{v['key']} per-round ratios (noise): /none "
                    + ", ".join(f"{x:.2f}" for x in v["paired_vs_none"])
                    + "; /empty "
                    + ", ".join(f"{x:.2f}" for x in v["paired_vs_empty_wasm"])
                    + "; /lua "
                    + ", ".join(f"{x:.2f}" for x in v["paired_vs_lua"])
                )
        if c.get("live_vs_static"):
            lv = c["live_vs_static"]
            parts.append(
                f"3l / 3 (live table vs static, same build; the propagation machinery per request): "
                f"{lv['median']:.3f} (IQR {lv['q1']:.3f}-{lv['q3']:.3f}); per round "
                + ", ".join(f"{x:.2f}" for x in c["paired_live_vs_static"])
                + f"; {c.get('live_variant_polls')} polls of the table server"
            )
        for mix, m in (c.get("memory_4096_vs_256") or {}).items():
            parts.append(
                f"3m / 3 in the {mix} mix (a 4096-slot memory of verified cookies vs the shipped 256, paired): "
                f"{m['spread']['median']:.3f} (IQR {m['spread']['q1']:.3f}-{m['spread']['q3']:.3f}); per round "
                + ", ".join(f"{x:.2f}" for x in m["paired"])
            )
        cpu_by_key = {v["key"]: v for v in c["variants"]}
        for name, f in floors(cpu_by_key, _mixes(c)).items():
            parts.append(f"floor ({name}): {f:.3f} of the empty filter")
        if not c.get("veer_measured"):
            parts.append("veer (variant 3) NOT MEASURED: target/wasm32-unknown-unknown/release/veer_filter.wasm missing")

    if "split" in s:
        rows = [
            [
                r["traffic"],
                f"{r['weight_bp'] / 100:g}%",
                f"{r['requests']:,}",
                f"{r['canary_share'] * 100:.3f}%",
                f"{r['error_points']:+.3f}",
                f"{r['sigma_points']:.3f}",
            ]
            for r in s["split"]["runs"]
        ]
        parts.append("\nSplit accuracy (canary share observed at the gateway's upstream clusters)")
        parts.append(_table(["traffic", "weight", "requests", "observed", "error (points)", "1 sigma"], rows))

    if "size" in s:
        z = s["size"]
        parts.append(f"\nSize: veer_filter.wasm {z.get('veer_bytes', 0):,} bytes (gzip {z.get('veer_gzip_bytes', 0):,}); "
                     f"empty filter {z.get('empty_bytes', 0):,} bytes")
        if z.get("by_crate"):
            rows = [[c["crate"], f"{c['bytes']:,}", f"{c['share'] * 100:.1f}%"] for c in z["by_crate"]]
            parts.append(_table(["code attributed to", "bytes", "share"], rows))
            parts.append(
                f"functions of JSON (de)serialization (names with serde/Deserialize/Visitor), any crate: "
                f"{z['serde_code_bytes']:,} of {z['code_bytes']:,} code bytes"
            )

    if "propagation" in s:
        parts.append("\nPropagation (publish -> every worker of the Envoy decides with it)")
        rows = []
        for key, workers in (
            ("controller", 2), ("table-server", 2), ("controller-c4", 4), ("table-server-c4", 4),
        ):
            p = s["propagation"].get(key)
            if p:
                rows.append([
                    p["source"], str(p.get("workers", workers)), str(p["changes"]), f"{p['min_ms']:.1f}",
                    f"{p['p50_ms']:.1f}", f"{p['p99_ms']:.1f}", f"{p['max_ms']:.1f}",
                ])
            elif s["propagation"].get(f"{key}_error"):
                rows.append([key, str(workers), "FAILED", "", "", "", ""])
        parts.append(_table(["source", "--concurrency", "changes", "min ms", "p50 ms", "p99 ms", "max ms"], rows))
        split_rows = []
        for key, workers in (
            ("controller", 2), ("table-server", 2), ("controller-c4", 4), ("table-server-c4", 4),
        ):
            p = s["propagation"].get(key) or {}
            parts_ms = [p.get(k) for k in (
                "publish_to_poller_applied", "poller_to_last_thread_applied", "last_thread_applied_to_probe",
                "publish_to_last_thread_applied",
            )]
            if all(parts_ms):
                split_rows.append([p["source"], str(workers)] + [
                    f"{x['p50_ms']:.1f} / {x['p99_ms']:.1f} / {x['max_ms']:.1f}" for x in parts_ms
                ])
        if split_rows:
            parts.append("Where the delay went, p50 / p99 / max ms (the gateway's log, 1 ms resolution):")
            parts.append(_table(
                ["source", "--concurrency", "publish -> poller applied", "poller -> last thread applied",
                 "last thread -> probes saw it", "publish -> last thread applied"],
                split_rows,
            ))

    if "controller" in s:
        k = s["controller"]
        parts.append(
            f"\nController scale ({k['canaries']} canaries, interval {k['interval']}, {k['gateways']} long-polling gateways, "
            f"{k['measure_s']:.0f}s): CPU {k['cpu_share_of_core'] * 100:.2f}% of one core, peak RSS {k['peak_rss_mb']:.1f} MB\n"
            f"  without the gateways (analysis only, {k['measure_without_gateways_s']:.0f}s): "
            f"{k['cpu_share_without_gateways'] * 100:.2f}% of one core\n"
            f"  in the window: {k['prometheus_queries_in_window']} Prometheus queries, {k['table_generations_in_window']} table "
            f"generations, {k['tables_served_in_window']} tables ({k['table_bytes_served_in_window'] / 1e6:.1f} MB) served; "
            f"phases at end {k['phases_at_end']}"
        )

    for sec, err in results.get("errors", {}).items():
        parts.append(f"\nSECTION {sec} FAILED: {err}")

    parts.append("\nTargets (issue 6; propagation: issue 16)")
    parts.append(_table(["target", "measured", "verdict"], [list(t) for t in targets(results)]))
    return "\n".join(parts)
