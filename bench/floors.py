"""Per-step floors for python3 -m bench: what the requests a step cannot avoid cost, measured in
the same run, on the same endpoint (through the same latency proxy), with a lean client.

A floor is the time of the minimum request pattern of a filesystem that answers each
system call before the next one arrives and keeps close() durable: one PutObject per file
of an untar, one GET per file that `cp -r` opens, one DeleteObject per unlink, one LIST
plus one HEAD per entry for a cold `ls -l` with exact metadata.  A filesystem that
defers (write-back) or guesses ahead (read-ahead) can beat a floor; one that does more
requests, or the same requests one at a time where the floor batches them, stays above.

Requests are signed here (SigV4, ~0.1 ms) and sent on keep-alive connections with
http.client, so a floor at 0 ms RTT is mostly server time, not client CPU (boto3 spends
~3 ms of CPU per request on this machine: its rows are the "physical limit" table).
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import hmac
import http.client
import math
import socket
import statistics
import time
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Optional

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
HEAD_BATCH = 16        # HEADs per pipelined batch (s3fuse's namespace.HEAD_BATCH)
HEAD_CONNS = 8         # connections the HEAD batches are spread over (s3fuse's head_threads)
COPY_THREADS = 8       # parallel CopyObjects in the directory-rename floor
SAMPLES = 21           # requests per median


def _quote(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


class RawS3:
    """A minimal path-style S3 client: signed requests on caller-held connections."""

    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str, bucket: str):
        u = urllib.parse.urlparse(endpoint)
        if u.scheme != "http":
            raise ValueError("floors are measured over plain http only")
        self.host, self.port = u.hostname, u.port or 80
        self.host_header = u.netloc
        self.region, self.access, self.secret, self.bucket = region, access_key, secret_key, bucket

    def connect(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection(self.host, self.port, timeout=120)
        c.connect()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def path(self, key: Optional[str]) -> str:
        p = "/" + _quote(self.bucket)
        return p if key is None else p + "/" + _quote(key, safe="/-_.~")

    def sign(self, method: str, path: str, query: dict, headers: dict, payload: bytes) -> dict:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        datestamp = amz_date[:8]
        payload_hash = hashlib.sha256(payload).hexdigest() if payload else EMPTY_SHA256
        h = {k.lower(): str(v) for k, v in headers.items()}
        h.update({"host": self.host_header, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date})
        signed = sorted(k for k in h if k in ("host", "content-md5", "content-type") or k.startswith("x-amz-"))
        cq = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        canonical = "\n".join([method, path, cq, "".join(f"{n}:{h[n]}\n" for n in signed),
                               ";".join(signed), payload_hash])
        scope = f"{datestamp}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = hmac.new(("AWS4" + self.secret).encode(), datestamp.encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access}/{scope}, "
                              f"SignedHeaders={';'.join(signed)}, Signature={sig}")
        return h

    def request(self, conn: http.client.HTTPConnection, method: str, key: Optional[str],
                query: Optional[dict] = None, headers: Optional[dict] = None, body: bytes = b"",
                ok=(200, 204)) -> tuple[int, bytes]:
        query = query or {}
        path = self.path(key)
        h = self.sign(method, path, query, headers or {}, body)
        url = path + ("?" + "&".join(f"{_quote(k)}={_quote(v)}" if v != "" else _quote(k)
                                     for k, v in sorted(query.items())) if query else "")
        conn.request(method, url, body=body or None, headers=h)
        r = conn.getresponse()
        data = r.read()
        if r.status not in ok:
            raise RuntimeError(f"{method} {key!r}: HTTP {r.status} {data[:200]!r}")
        return r.status, data

    def list_keys(self, conn, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                q["continuation-token"] = token
            _, body = self.request(conn, "GET", None, query=q)
            root = ET.fromstring(body)
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            keys += [e.text for e in root.iter(f"{ns}Key")]
            trunc = root.find(f"{ns}IsTruncated")
            token_el = root.find(f"{ns}NextContinuationToken")
            if trunc is None or trunc.text != "true" or token_el is None:
                return keys
            token = token_el.text

    def head_pipelined(self, sock: socket.socket, keys: list[str]) -> None:
        """HEADs of ``keys`` written at once on ``sock``, answers read in order (all 200)."""
        reqs = []
        for key in keys:
            path = self.path(key)
            h = self.sign("HEAD", path, {}, {}, b"")
            reqs.append(f"HEAD {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n")
        sock.sendall("".join(reqs).encode("latin-1"))
        buf, n = b"", 0
        while n < len(keys):
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                data = sock.recv(1 << 16)
                if not data:
                    raise RuntimeError("server closed a pipelined HEAD connection")
                buf += data
                continue
            status = buf[:end].split(b" ", 2)[1]
            if status != b"200":
                raise RuntimeError(f"pipelined HEAD answered {status!r}")
            buf, n = buf[end + 4:], n + 1

    def delete_many(self, conn, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            xml = ("<Delete><Quiet>true</Quiet>" + "".join(
                f"<Object><Key>{k.replace('&', '&amp;').replace('<', '&lt;')}</Key></Object>"
                for k in keys[i:i + 1000]) + "</Delete>").encode()
            md5 = base64.b64encode(hashlib.md5(xml).digest()).decode()
            self.request(conn, "POST", None, query={"delete": ""}, headers={"content-md5": md5}, body=xml)


def _median_ms(fn, n: int = SAMPLES) -> float:
    ts = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts)


def measure(raw: RawS3, many_keys: list[str], out_prefix: str, out_keys: list[str], mv_src: str,
            nwrite: int) -> dict:
    """The request costs the floors are made of.  ``many_keys``: the ls -l directory;
    ``out_prefix``/``out_keys``: the cp -r tree (one LIST page); ``mv_src``: a prefix of ``nwrite`` objects this call
    renames (copies + batch delete) to time the directory-rename floor."""
    parts: dict = {}
    c = raw.connect()
    try:
        raw.request(c, "HEAD", many_keys[0])          # pay the handshake before timing
        body = b"f" * 1024
        parts["put_1KiB_ms"] = _median_ms(lambda i: raw.request(c, "PUT", f"floor/put-{i}", body=body))
        parts["get_1KiB_ms"] = _median_ms(lambda i: raw.request(c, "GET", out_keys[i % len(out_keys)]))
        parts["head_ms"] = _median_ms(lambda i: raw.request(c, "HEAD", many_keys[i % len(many_keys)]))
        parts["delete_ms"] = _median_ms(lambda i: raw.request(c, "DELETE", f"floor/put-{i}"))
        parts["list_1_page_ms"] = _median_ms(
            lambda i: raw.request(c, "GET", None, query={"list-type": "2", "prefix": out_prefix}), n=7)
        t = time.perf_counter()
        n = len(raw.list_keys(c, many_keys[0].rsplit("/", 1)[0] + "/"))
        parts["list_many_s"] = time.perf_counter() - t
        if n != len(many_keys):
            raise RuntimeError(f"floor LIST found {n} keys, want {len(many_keys)}")
    finally:
        c.close()

    # pipelined HEADs of the whole directory: batches of 16 over 8 connections (warm)
    socks = [socket.create_connection((raw.host, raw.port), timeout=120) for _ in range(HEAD_CONNS)]
    try:
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.head_pipelined(s, many_keys[:1])
        batches = [many_keys[i:i + HEAD_BATCH] for i in range(0, len(many_keys), HEAD_BATCH)]
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(HEAD_CONNS) as ex:
            list(ex.map(lambda j: [raw.head_pipelined(socks[j], b) for b in batches[j::HEAD_CONNS]],
                        range(HEAD_CONNS)))
        parts["heads_pipelined_s"] = time.perf_counter() - t
        parts["head_round_trips"] = math.ceil(len(batches) / HEAD_CONNS)
    finally:
        for s in socks:
            s.close()

    # directory rename: LIST, CopyObject of each key (8 at once), one DeleteObjects per 1000
    conns = [raw.connect() for _ in range(COPY_THREADS)]
    try:
        for cn in conns:
            raw.request(cn, "HEAD", many_keys[0])
        dst = mv_src.rstrip("/") + "-moved/"
        t = time.perf_counter()
        keys = raw.list_keys(conns[0], mv_src)

        def copy(j):
            for k in keys[j::COPY_THREADS]:
                raw.request(conns[j], "PUT", dst + k[len(mv_src):],
                            headers={"x-amz-copy-source": "/" + raw.bucket + "/" + _quote(k, safe="/-_.~")})
        with cf.ThreadPoolExecutor(COPY_THREADS) as ex:
            list(ex.map(copy, range(COPY_THREADS)))
        raw.delete_many(conns[0], keys)
        parts["mv_dir_s"] = time.perf_counter() - t
        if len(keys) != nwrite:
            raise RuntimeError(f"mv floor: {len(keys)} keys under {mv_src}, want {nwrite}")
        raw.delete_many(conns[0], [dst + k[len(mv_src):] for k in keys])   # untimed clean-up
    finally:
        for cn in conns:
            cn.close()
    return parts


def step_floors(parts: dict, names: dict, nw: int, many: int, random_reads: int,
                get_big_s: Optional[float], put_big_s: Optional[float]) -> dict:
    """{step name: {"seconds", "doc"}} from the measured parts (``measure``) and the boto3
    rows of the big file; ``names``: step role -> step name (bench.make_steps)."""
    put, get = parts["put_1KiB_ms"] / 1000, parts["get_1KiB_ms"] / 1000
    dele, lst = parts["delete_ms"] / 1000, parts["list_1_page_ms"] / 1000
    out = {}

    def add(role, seconds, doc):
        if role in names and seconds is not None:
            out[names[role]] = {"seconds": seconds, "doc": doc}

    add("read_cold", get_big_s, "boto3 ranged GETs of the whole file, 8 threads x 8 MiB")
    add("ls_cold", parts["list_many_s"] + parts["heads_pipelined_s"],
        f"LIST of the directory ({math.ceil(many / 1000)} pages) + {many} HEADs pipelined "
        f"{HEAD_BATCH} per batch on {HEAD_CONNS} connections ({parts['head_round_trips']} round trips each)")
    add("random_read", random_reads * get,
        f"one GET per pread: {random_reads} x median small GET ({parts['get_1KiB_ms']:.1f} ms)")
    add("cp_out", lst + nw * get, f"one LIST + {nw} x median 1 KiB GET ({parts['get_1KiB_ms']:.1f} ms)")
    add("copy_in", put_big_s, "boto3 multipart PUT, 8 threads x 8 MiB")
    add("untar", nw * put, f"{nw} x median 1 KiB PUT ({parts['put_1KiB_ms']:.1f} ms)")
    add("rm_rf", lst + nw * dele, f"one LIST + {nw} x median DELETE ({parts['delete_ms']:.1f} ms)")
    add("mv_dir", parts["mv_dir_s"],
        f"measured: LIST + {nw} CopyObjects {COPY_THREADS} at a time + DeleteObjects")
    return out
