"""Envoy processes for the benchmark: the backend (primary and canary behind one Envoy with
direct responses) and the gateway in each variant under test, plus admin-stat helpers.
Configs are written as JSON, which Envoy reads as YAML."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import procs

ROUTE_HEADER = "x-veer-route"
LISTENER_STAT_PREFIX = "ingress"


@dataclass
class Envoy:
    name: str
    proc: subprocess.Popen
    admin_port: int
    ports: dict[str, int]
    log: Path
    config_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, listener: str = "ingress") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    def counters(self, pattern: str) -> dict[str, int]:
        """Admin stats whose names match the regex `pattern`, as integers."""
        status, _, body = procs.http_get(
            f"http://127.0.0.1:{self.admin_port}/stats?filter={pattern}", timeout=30
        )
        if status != 200:
            raise procs.BenchError(f"{self.name}: /stats answered {status}")
        out: dict[str, int] = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def counter(self, name: str) -> int:
        got = self.counters("^" + re.escape(name) + "$")
        return got.get(name, 0)

    def downstream_rq_total(self) -> int:
        return self.counter(f"http.{LISTENER_STAT_PREFIX}.downstream_rq_total")

    def upstream_rq(self) -> dict[str, int]:
        got = self.counters(r"^cluster\.(primary|canary)\.upstream_rq_total$")
        return {c: got.get(f"cluster.{c}.upstream_rq_total", 0) for c in ("primary", "canary")}

    def stop(self) -> None:
        procs.stop(self.proc)


def _admin(port: int) -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def _static_cluster(name: str, port: int, *, http2: bool = False) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return cluster


def _hcm_listener(name: str, port: int, routes: list[dict], http_filters: list[dict]) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": {
                                "name": name,
                                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
                            },
                            "http_filters": [
                                *http_filters,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def header_routes() -> list[dict]:
    """The gateway's static routes: the filter's header picks the upstream. This is what
    `veer render` produces as a VirtualService (header match on x-veer-route)."""
    return [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": ROUTE_HEADER, "string_match": {"exact": "canary"}}],
            },
            "route": {"cluster": "canary"},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "primary"}},
    ]


def weighted_routes(canary_percent: int) -> list[dict]:
    """Envoy's native split: what an Istio VirtualService with weights compiles to."""
    return [
        {
            "match": {"prefix": "/"},
            "route": {
                "weighted_clusters": {
                    "clusters": [
                        {"name": "primary", "weight": 100 - canary_percent},
                        {"name": "canary", "weight": canary_percent},
                    ]
                }
            },
        }
    ]


def wasm_filter(plugin_name: str, wasm_path: Path, configuration: dict | str | None) -> dict:
    """A wasm HTTP filter; a dict configuration is sent as JSON, a str as it is."""
    config: dict = {
        "name": plugin_name,
        "root_id": plugin_name,
        "vm_config": {
            "vm_id": plugin_name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm_path)}},
        },
    }
    if configuration is not None:
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration if isinstance(configuration, str) else json.dumps(configuration),
        }
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


def lua_filter(source: Path) -> dict:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"filename": str(source)},
        },
    }


def start(
    name: str,
    listeners: dict[str, tuple[list[dict], list[dict]]],
    clusters: list[dict],
    *,
    cpus: str | None,
    concurrency: int,
    workdir: Path,
    wasm_log_level: str | None = None,
) -> Envoy:
    """Start an Envoy with the given listeners ({name: (routes, http_filters)}) and wait
    until its admin says LIVE and every listener accepts connections."""
    admin_port = procs.free_port()
    ports = {ln: procs.free_port() for ln in listeners}
    bootstrap = {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [_hcm_listener(ln, ports[ln], *listeners[ln]) for ln in listeners],
            "clusters": clusters,
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(bootstrap, indent=1))
    log = workdir / f"{name}.log"
    proc = procs.spawn(
        [
            procs.envoy_binary(),
            "-c", str(config_path),
            "--concurrency", str(concurrency),
            "--disable-hot-restart",
            "--log-level", "warn",
            *(["--component-log-level", f"wasm:{wasm_log_level}"] if wasm_log_level else []),
        ],
        cpus=cpus,
        log=log,
    )
    env = Envoy(name, proc, admin_port, ports, log, config_path)

    def ready() -> bool:
        status, _, body = procs.http_get(f"http://127.0.0.1:{admin_port}/ready", timeout=1)
        return status == 200 and body.strip() == b"LIVE"

    procs.wait_until(f"envoy {name}", ready, 60, proc, log)
    for ln, port in ports.items():
        procs.wait_until(f"envoy {name} listener {ln}", lambda p=port: _accepts(p), 20, proc, log)
    return env


def _accepts(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def start_backend(workdir: Path, cpus: str | None) -> Envoy:
    """Primary and canary upstreams: one Envoy, two listeners, each answering with its name."""

    def answer(who: str) -> tuple[list[dict], list[dict]]:
        return (
            [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": who + "\n"}},
                    "response_headers_to_add": [{"header": {"key": "x-backend", "value": who}}],
                }
            ],
            [],
        )

    return start(
        "backend",
        {"primary": answer("primary"), "canary": answer("canary")},
        [],
        cpus=cpus,
        concurrency=1,
        workdir=workdir,
    )


def backend_clusters(backend: Envoy) -> list[dict]:
    return [_static_cluster("primary", backend.ports["primary"]), _static_cluster("canary", backend.ports["canary"])]


def static_cluster(name: str, port: int) -> dict:
    return _static_cluster(name, port)
