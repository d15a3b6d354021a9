#!/usr/bin/env python3
"""Writes the seed corpora of the structured fuzz targets (cookie, matchers, decision).

Those targets read their input through `arbitrary` (derive), so a seed is the byte string
that `arbitrary` 1.x decodes into a chosen, realistic `Input`. This script encodes such
inputs: fixed-size values and contents come from the front of the data, collection lengths
from the back, enum tags are u32 scaled by the variant count, and the struct's last field
takes the rest. Check a seed with `cargo fuzz fmt <target> corpus/<target>/<file>`.
The config target's seeds are plain JSON files, written by hand.

Usage: python3 fuzz/make_seeds.py (writes under the script's own corpus/ directory)
"""
import hashlib
import hmac
import base64
import os
import struct

KEY_A = bytes(range(1, 33))  # veer_fuzz::KEY_A
KEY_B = bytes(range(0xA0, 0xB0))  # veer_fuzz::KEY_B


class Enc:
    def __init__(self):
        self.ops = []  # ("front", bytes) | ("len", n)

    def front(self, b):
        self.ops.append(("front", bytes(b)))
        return self

    def u8(self, v):
        return self.front([v])

    def boolean(self, v):
        return self.u8(1 if v else 0)

    def u32(self, v):
        return self.front(struct.pack("<I", v))

    def u64(self, v):
        return self.front(struct.pack("<Q", v))

    def tag(self, idx, count):
        t = 0 if idx == 0 else (idx << 32) // count + 1
        assert (t * count) >> 32 == idx
        return self.u32(t)

    def byts(self, b):
        b = b.encode() if isinstance(b, str) else bytes(b)
        self.ops.append(("len", len(b)))
        return self.front(b)

    def option(self, v, enc):
        self.boolean(v is not None)
        if v is not None:
            enc(v)
        return self

    def vec(self, items, enc):
        for it in items:
            self.boolean(True)
            enc(it)
        return self.boolean(False)

    def rest(self, b):
        b = b.encode() if isinstance(b, str) else bytes(b)
        return self.front(b)

    def build(self):
        # How many bytes each length takes depends on what remains when it is read, which
        # depends on the total size: iterate to a fixed point.
        fronts = sum(len(b) for k, b in self.ops if k == "front")
        lens = [n for k, n in self.ops if k == "len"]
        total = fronts + len(lens)
        while True:
            remaining, backs = total, []
            for kind, v in self.ops:
                if kind == "front":
                    remaining -= len(v)
                    continue
                if remaining <= 256:
                    assert v <= remaining - 1
                    backs.append(bytes([v]))
                    remaining -= 1
                else:
                    assert remaining <= 65538, "seed too large"
                    assert v <= remaining - 2
                    # With 257 bytes left the range 0..=255 needs only the first of the
                    # two length bytes split off.
                    group = bytes([v, 0]) if remaining == 257 else struct.pack(">H", v)
                    backs.append(group)
                    remaining -= 2
            size = fronts + sum(len(b) for b in backs)
            if size == total:
                break
            total = size
        front = b"".join(v for k, v in self.ops if k == "front")
        return front + b"".join(reversed(backs))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def cookie_value(route, seed, key=KEY_A):
    msg = b"veer-affinity-v1\0" + struct.pack("<Q", len(route.encode())) + route.encode() + seed
    mac = hmac.new(key, msg, hashlib.sha256).digest()[:16]
    return f"v1.{b64(seed)}.{b64(mac)}"


CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, f"seed-{name}"), "wb") as f:
        f.write(data)


# --- cookie: header, name, route, other_route, seed, before, after(rest)
def cookie_seed(header, name, route, other, seed, before, after):
    e = Enc().byts(header)
    if isinstance(name, int):
        e.tag(0, 2).u8(name)
    else:
        e.tag(1, 2).byts(name)
    return e.byts(route).byts(other).front(seed).byts(before).rest(after).build()


S1 = bytes(range(16))
S2 = bytes([0xEE] * 16)
write("cookie", "signed-among-analytics", cookie_seed(
    f'_ga=GA1.2.12345.67890; flagger-cookie={cookie_value("test/podinfo", S1)}; session="abc def"',
    0, "test/podinfo", "test/other", S1, "theme=dark", " lang=en"))
write("cookie", "duplicated-broken-quotes", cookie_seed(
    f'veer="v1.AAAA; veer=v1.{b64(S2)}; veer={cookie_value("shop/web", S2)}"; veer; ;; =x',
    1, "shop/web", "shop/web2", S2, "", ""))
write("cookie", "forged-and-unsigned", cookie_seed(
    f"\tsid = v1.{b64(S1)}.{b64(bytes(16))} ;sid=v1.{b64(S1)};sid=v1.{b64(S1)}.",
    "sid", "a/b", "a/c", S1, b"\xff\xfe=1", "x"))


# --- matchers
def cond(e, exact=None, prefix=None, suffix=None, regex=None, present=None):
    for v in (exact, prefix, suffix, regex):
        e.option(v, e.byts)
    return e.option(present, e.boolean)


def matchers_seed(c, values, literals, headers, cookies, query, method, uri, req_method,
                  req_path, req_headers, qname, qvalue):
    e = Enc()
    cond(e, **c)
    e.vec(values, e.byts)
    e.byts(literals[0]).byts(literals[1])
    for conds in (headers, cookies, query):
        e.vec(conds, lambda nc: cond(e.byts(nc[0]), **nc[1]))
    e.option(method, e.byts)
    e.option(uri, lambda u: cond(e, **u))
    e.byts(req_method).byts(req_path)
    e.vec(req_headers, lambda hv: e.byts(hv[0]).byts(hv[1]))
    return e.byts(qname).rest(qvalue).build()


write("matchers", "ab-rule-istio", matchers_seed(
    {"regex": ".*(Firefox|Chrome)/[0-9]+.*"},
    ["Mozilla/5.0 Firefox/120.0", "curl/8.5", b"\xff\xfe Chrome/1"],
    ("a.b", "c|d"),
    [("x-user-group", {"exact": "beta"})], [("tester", {"present": True})],
    [("canary", {"exact": "1"})], "GET", {"prefix": "/api/"},
    "GET", "/api/v1/items?canary=1&q=a%20b#frag",
    [("X-User-Group", "beta"), ("cookie", "tester=1; _ga=x")], "can ary", "1%zz"))
write("matchers", "alternation-anchoring", matchers_seed(
    {"regex": "b|c"}, ["b", "ab", "bc", "c", ""], ("", "x*"),
    [("user-agent", {"suffix": "bot"})], [("sid", {"present": False})],
    [("v", {"regex": "[0-9]{1,3}"})], None, {"regex": "/(a|b)/.*"},
    "POST", "/a/x?v=12&v=abc", [("user-agent", "Googlebot"), ("cookie", "sid2=1")],
    "v", "12"))
write("matchers", "two-operators-rejected", matchers_seed(
    {"exact": "a", "prefix": "a"}, ["a"], ("(?i)K", "\\p{Greek}"),
    [("bad header", {"exact": "x"})], [], [("", {"present": True})], "G ET", None,
    "", "", [], "", ""))


# --- decision
def pick_known(e, i):
    return e.tag(0, 2).u8(i)


def pick_raw(e, b):
    return e.tag(1, 2).byts(b)


def cookie_part(e, p):
    kind = p[0]
    variants = ["genuine", "forged", "unsigned", "wrongkey", "tampered", "quoted", "raw"]
    e.tag(variants.index(kind), len(variants))
    if kind in ("genuine", "wrongkey", "quoted"):
        _, name, route, seed = p
        e.u8(name).u8(route).front(seed)
    elif kind == "forged":
        _, name, seed, mac = p
        e.u8(name).front(seed).front(mac)
    elif kind == "unsigned":
        _, name, seed = p
        e.u8(name).front(seed)
    elif kind == "tampered":
        _, name, route, seed, at, xor = p
        e.u8(name).u8(route).front(seed).u8(at).u8(xor)
    else:
        e.byts(p[1])


def decision_seed(authority, path, suffix, method, headers, cookies, separator, entropy):
    e = Enc()
    for p in (authority, path):
        (pick_known if isinstance(p, int) else pick_raw)(e, p)
    e.byts(suffix)
    (pick_known if isinstance(method, int) else pick_raw)(e, method)
    e.vec(headers, lambda hv: ((pick_known if isinstance(hv[0], int) else pick_raw)(e, hv[0]),
                               e.byts(hv[1])))
    e.vec(cookies, lambda p: cookie_part(e, p))
    return e.u8(separator).u64(entropy).build()


# Indexes into decision.rs: AUTHORITIES, PATHS, HEADER_NAMES, COOKIE_NAMES (0 flagger-cookie,
# 1 veer, 2 tester), ROUTE_NAMES (0 shop/web, 1 shop/checkout, 2 api/podinfo, 3 edge/default).
write("decision", "returning-user-signed", decision_seed(
    0, 0, "products?id=7", 0, [(4, "5f2c8a51-6e1f-4c57-9d1c-0a8e4b1f9e21")],
    [("genuine", 0, 0, S1), ("raw", "_ga=GA1.2.3")], 0, 1))
write("decision", "weight0-forged-tampered", decision_seed(
    1, 1, "", 1, [(1, "never"), (6, "canary")],
    [("forged", 0, S2, bytes(16)), ("tampered", 0, 1, S1, 30, 1), ("unsigned", 0, S1),
     ("wrongkey", 0, 1, S2)], 1, 2))
write("decision", "ab-beta-sticky", decision_seed(
    3, 2, "", 0, [(2, "beta"), (5, "Mozilla/5.0 Firefox/120.0"), (3, "user-42")],
    [("raw", "tester=yes"), ("quoted", 1, 2, S2), ("genuine", 1, 0, S1)], 2, 3))
write("decision", "override-and-garbage", decision_seed(
    b"eu.shop.example.com:8080", b"/\xff\xfe?x", b"", b"PATCH",
    [(0, b'flagger-cookie="v1.; flagger-cookie=;;\xff'), (1, "always"), (b"x-veer-route", "canary")],
    [], 3, 4))
# A config typo that a wrapper-only check would accept: `\A(?:a)|(?:b)\z` compiles, and
# means "starts with a, or ends with b" instead of a whole-value match.
write("matchers", "regex-unbalanced-wrapper", matchers_seed(
    {"regex": "a)|(?:b"}, ["axxx", "xxb", "a", "b"], ("a", "b"), [], [], [], None, None,
    "GET", "/", [], "q", "1"))

# Flagger's documented cookie A/B regex, which veer-core answers with a byte-level shortcut:
# the values probe list boundaries, spaces after `;`, prefixes and suffixes of the literal.
write("matchers", "flagger-cookie-list", matchers_seed(
    {"regex": "^(.*?;)?(canary=always)(;.*)?$"},
    ["canary=always", "x=1;canary=always;y=2", "x=1; canary=always", "xcanary=always",
     "canary=always2", ";canary=always;", "a\nb;canary=always"],
    ("^a$", "a\\$"), [("cookie", {"regex": "^(.*?;)?(canary=always)(;.*)?$"})], [], [],
    None, None, "GET", "/", [("cookie", "x=1;canary=always")], "q", "1"))

# Fixed finding 1 (fuzz/README.md): regex-lite applies a repetition after a flag group to
# the atom before it, so `a(?i)*b` was accepted and meant `a*b`; RE2 and the regex crate
# reject it, and so does veer-core now.
write("matchers", "regex-repetition-after-flag-group", matchers_seed(
    {"regex": "a(?i)*b"}, ["b", "aab"], ("a", "b"), [], [], [], None, None,
    "GET", "/", [], "q", "1"))
