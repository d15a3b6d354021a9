"""Size of the filter's .wasm, and what each dependency costs in it.

The shipped file is the release build (stripped). To attribute its bytes, the same code is
built once more with a profile that keeps the `name` section (`bench-size`: release without
strip, defined on the command line so the workspace's profiles stay untouched); each function
body in the code section is then charged to the crate its (demangled) name starts with.
Function names do not change code size, so the attribution describes the shipped file too."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

from . import procs

TARGET = "wasm32-unknown-unknown"
RELEASE_DIR = procs.REPO / "target" / TARGET / "release"
NAMED_DIR = procs.REPO / "target" / TARGET / "bench-size"
NAMED_PROFILE = [
    "--profile", "bench-size",
    "--config", 'profile.bench-size.inherits="release"',
    "--config", "profile.bench-size.strip=false",
]


def _leb(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _name(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _leb(buf, pos)
    return buf[pos : pos + n].decode("utf-8", "replace"), pos + n


def sections(wasm: bytes) -> list[tuple[int, str, int, int]]:
    """(id, custom name or "", payload start, payload end) of every section."""
    if wasm[:4] != b"\0asm":
        raise procs.BenchError("not a wasm module")
    pos, out = 8, []
    while pos < len(wasm):
        sid = wasm[pos]
        size, pos = _leb(wasm, pos + 1)
        end = pos + size
        name = _name(wasm, pos)[0] if sid == 0 else ""
        out.append((sid, name, pos, end))
        pos = end
    return out


SECTION_NAMES = {0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
                 7: "export", 8: "start", 9: "element", 10: "code", 11: "data", 12: "datacount"}


def function_sizes(wasm: bytes) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """[(function name, body bytes)] from the code and name sections; and bytes per section."""
    imported = 0
    bodies: list[int] = []
    names: dict[int, str] = {}
    per_section: dict[str, int] = {}
    for sid, cname, start, end in sections(wasm):
        label = f"custom:{cname}" if sid == 0 else SECTION_NAMES.get(sid, str(sid))
        per_section[label] = per_section.get(label, 0) + (end - start)
        if sid == 2:
            count, p = _leb(wasm, start)
            for _ in range(count):
                _, p = _name(wasm, p)
                _, p = _name(wasm, p)
                kind = wasm[p]
                p += 1
                if kind == 0:
                    imported += 1
                    _, p = _leb(wasm, p)
                elif kind == 1:  # table: reftype, limits
                    p += 1
                    flags = wasm[p]
                    _, p = _leb(wasm, p + 1)
                    if flags & 1:
                        _, p = _leb(wasm, p)
                elif kind == 2:  # memory: limits
                    flags = wasm[p]
                    _, p = _leb(wasm, p + 1)
                    if flags & 1:
                        _, p = _leb(wasm, p)
                elif kind == 3:  # global: valtype, mut
                    p += 2
                else:
                    raise procs.BenchError(f"unknown import kind {kind}")
        elif sid == 10:
            count, p = _leb(wasm, start)
            for _ in range(count):
                size, p2 = _leb(wasm, p)
                bodies.append(p2 + size - p)
                p = p2 + size
        elif sid == 0 and cname == "name":
            _, p = _name(wasm, start)
            while p < end:
                sub = wasm[p]
                size, p = _leb(wasm, p + 1)
                if sub == 1:
                    count, q = _leb(wasm, p)
                    for _ in range(count):
                        idx, q = _leb(wasm, q)
                        nm, q = _name(wasm, q)
                        names[idx] = nm
                p += size
    funcs = [(names.get(imported + i, f"<unnamed #{imported + i}>"), size) for i, size in enumerate(bodies)]
    return funcs, per_section


_GENERIC_CRATES = {"core", "alloc", "std"}


def crate_of(symbol: str) -> str:
    """The crate a demangled Rust symbol belongs to. For a trait impl `<T as Trait>::f`, the
    type's crate is charged, unless it is a std type, then the trait's."""
    s = symbol
    m = re.match(r"^<(.+?) as (.+?)>::", s)
    if m:
        ty, tr = m.group(1), m.group(2)
        ty_crate = _first_path(ty)
        tr_crate = _first_path(tr)
        if ty_crate in _GENERIC_CRATES or ty_crate is None:
            return tr_crate or ty_crate or "?"
        return ty_crate
    if s.startswith("<"):
        s = s[1:]
    return _first_path(s) or ("(unnamed)" if symbol.startswith("<unnamed") else symbol.split("(")[0][:40])


def _first_path(s: str) -> str | None:
    s = s.lstrip("&*").replace("mut ", "").replace("dyn ", "").lstrip("[(")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    return m.group(1) if m else None


def build(package: str, named: bool) -> None:
    argv = ["cargo", "build", "-q", "-p", package, "--target", TARGET]
    argv += NAMED_PROFILE if named else ["--release"]
    done = subprocess.run(argv, cwd=procs.REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise procs.BenchError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")


def demangle(names: list[str]) -> list[str]:
    """Rust symbols (legacy and v0) demangled by binutils' c++filt, crate hashes dropped."""
    binary = procs.require_binary("c++filt", "apt-get install -y binutils")
    done = subprocess.run([binary], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    out = done.stdout.splitlines()
    if len(out) != len(names):
        raise procs.BenchError("c++filt returned a different number of lines")
    return [re.sub(r"\[[0-9a-f]{16}\]", "", re.sub(r"::h[0-9a-f]{16}$", "", n)) for n in out]


# Exported ABI entry points and allocator exports are proxy-wasm's (or std's) code.
_EXPORTS = {"malloc": "proxy_wasm", "_initialize": "std"}


# Functions whose names mention these belong to JSON (de)serialization, whatever crate
# they are charged to: generic serde code is instantiated for veer-core's types.
_SERDE_MARKERS = ("serde", "Deserialize", "Visitor", "MapAccess", "SeqAccess")


def serde_bytes(path: Path) -> int:
    funcs, _ = function_sizes(path.read_bytes())
    names = demangle([n for n, _ in funcs])
    return sum(size for name, (_, size) in zip(names, funcs) if any(m in name for m in _SERDE_MARKERS))


def by_crate(path: Path) -> tuple[list[dict], dict[str, int]]:
    funcs, per_section = function_sizes(path.read_bytes())
    names = demangle([n for n, _ in funcs])
    totals: dict[str, int] = {}
    for name, (_, size) in zip(names, funcs):
        if name.startswith("proxy_on_") or name.startswith("proxy_abi_"):
            c = "proxy_wasm"
        else:
            c = _EXPORTS.get(name) or crate_of(name)
        totals[c] = totals.get(c, 0) + size
    code = sum(totals.values()) or 1
    rows = sorted(({"crate": c, "bytes": b, "share": b / code} for c, b in totals.items()), key=lambda r: -r["bytes"])
    return rows, per_section


def run(build_first: bool = True) -> dict:
    veer = RELEASE_DIR / "veer_filter.wasm"
    empty = RELEASE_DIR / "veer_bench_empty_filter.wasm"
    build("veer-bench-empty-filter", named=False)
    if not veer.exists():
        raise procs.BenchError(f"{veer} missing: scripts/build-filter.sh")
    build("veer-filter", named=True)
    # The shipped module went through wasm-opt (scripts/build-filter.sh); so does the named
    # build, by the same script, keeping its names (-g), so the split is of what ships.
    named = NAMED_DIR / "veer_filter.opt.wasm"
    opt = subprocess.run(
        [str(procs.REPO / "scripts" / "wasm-opt.sh"), str(NAMED_DIR / "veer_filter.wasm"), str(named), "-g"],
        cwd=procs.REPO, capture_output=True, text=True,
    )
    if opt.returncode != 0:
        raise procs.BenchError(f"scripts/wasm-opt.sh failed:\n{opt.stderr[-3000:]}")
    rows, per_section = by_crate(named)
    data = veer.read_bytes()
    # The named build must be of the same source as the shipped file; another build may have
    # replaced the shipped file in between (a shared checkout).
    if abs(function_sizes(data)[1].get("code", 0) - per_section.get("code", 0)) > 0.02 * per_section.get("code", 1):
        raise procs.BenchError("the shipped .wasm and the named build differ: the filter was rebuilt meanwhile; rerun")
    # Small crates are folded into one row so the table stays readable.
    top = [r for r in rows if r["share"] >= 0.005]
    rest = [r for r in rows if r["share"] < 0.005]
    if rest:
        top.append({"crate": f"({len(rest)} others)", "bytes": sum(r["bytes"] for r in rest),
                    "share": sum(r["share"] for r in rest)})
    shipped_sections = {k: v for k, v in function_sizes(data)[1].items()}
    return {
        "veer_bytes": len(data),
        "veer_gzip_bytes": len(gzip.compress(data, 9)),
        "empty_bytes": empty.stat().st_size,
        "shipped_sections": shipped_sections,
        "named_build_sections": per_section,
        "by_crate": top,
        "code_bytes": sum(r["bytes"] for r in rows),
        "serde_code_bytes": serde_bytes(named),
    }
