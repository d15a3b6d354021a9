"""wrk as the load generator: run it pinned, with a traffic script, and read its summary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import procs

WRK_DIR = Path(__file__).resolve().parents[1] / "wrk"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(
    url: str,
    *,
    script: str,
    duration_s: float,
    connections: int = 64,
    threads: int = 1,
    cpus: str | None = "1",
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> WrkResult:
    """Run wrk for `duration_s`, or until `stop_when()` (polled) says enough."""
    binary = procs.require_binary("wrk", "apt-get install -y wrk")
    argv = [
        binary,
        "-t", str(threads),
        "-c", str(connections),
        "-d", f"{max(1, round(duration_s))}s",
        "--timeout", "5s",
        "-s", str(WRK_DIR / script),
        url,
    ]
    argv = procs.pinned(argv, cpus)
    run_env = dict(os.environ)
    run_env.update(env or {})
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env)
    try:
        if stop_when is not None:
            # wrk has no request count; SIGINT makes it stop early and still print its summary.
            deadline = time.monotonic() + duration_s
            while proc.poll() is None and time.monotonic() < deadline:
                if stop_when():
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.2)
        out, err = proc.communicate(timeout=timeout_s or duration_s + 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise procs.BenchError(f"wrk failed ({proc.returncode}): {err}{out}")
    return parse(out)


def parse(out: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    if not m:
        raise procs.BenchError(f"cannot read wrk's summary:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(m.group(1)),
        seconds=float(m.group(2)) * scale,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        output=out,
    )
