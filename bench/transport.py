#!/usr/bin/env python3
"""Transport candidates for s3fuse, measured on one endpoint (docs/design/transport.md).

    python3 -m bench.transport --endpoint http://127.0.0.1:7480 [--heads 1000] [--json FILE]

Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.  For each candidate, one
thread in this process: client CPU (process time, i.e. every thread of this process,
awscrt's event loop included) and wall time per HEAD (one at a time, and pipelined /
concurrent batches of 16), per 1 MiB GET and per 8 MiB PUT; then a 256 MiB read and
write with 8 parts of 8 MiB in flight.  The server's CPU is not counted (another
process).  Candidates:

- ``boto3``: botocore client (path style, checksums when_required).
- ``botocore-signer+urllib3``: botocore's ``S3SigV4Auth`` on an ``AWSRequest``, sent on a
  ``urllib3`` pool.
- ``lean``: s3fuse before issue 14 (hand-signed SigV4 over http.client, raw-socket
  pipelined HEADs; needs ``--lean-from DIR``, a checkout of that version).
- ``awscrt``: ``aws_sign_request`` + ``HttpClientConnection`` (native signing and HTTP);
  256 MiB through ``S3Client`` (its own part splitting and connection pool).
- ``s3fuse``: the transport of this tree (``s3fuse.s3.transport``), if importable.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
import uuid

import boto3
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

MiB = 1 << 20
REGION = "us-east-1"


def cpu():
    return time.process_time()


class Boto:
    name = "boto3"

    def __init__(self, ep, bucket, ak, sk):
        self.c = boto3.client("s3", endpoint_url=ep, region_name=REGION, aws_access_key_id=ak,
                              aws_secret_access_key=sk, verify=CA or None,
                              config=Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                                            request_checksum_calculation="when_required",
                                            response_checksum_validation="when_required"))
        self.b = bucket

    def head(self, key):
        return self.c.head_object(Bucket=self.b, Key=key)["ContentLength"]

    def get(self, key, start, end):
        return self.c.get_object(Bucket=self.b, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read()

    def put(self, key, body, md5):
        return self.c.put_object(Bucket=self.b, Key=key, Body=body, ContentMD5=md5)["ETag"]


class BotoSignerUrllib3:
    name = "botocore-signer+urllib3"

    def __init__(self, ep, bucket, ak, sk):
        self.ep, self.b = ep, bucket
        self.auth = S3SigV4Auth(Credentials(ak, sk), "s3", REGION)
        self.pool = urllib3.PoolManager(maxsize=32, ca_certs=CA or None)

    def _send(self, method, key, headers=None, body=None, preload=True):
        url = f"{self.ep}/{self.b}/{key}"
        req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
        if body is not None:
            req.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        self.auth.add_auth(req)
        p = req.prepare()
        return self.pool.request(method, p.url, body=body, headers=dict(p.headers), preload_content=preload,
                                 retries=False)

    def head(self, key):
        return int(self._send("HEAD", key).headers["content-length"])

    def get(self, key, start, end):
        return self._send("GET", key, {"Range": f"bytes={start}-{end - 1}"}).data

    def put(self, key, body, md5):
        return self._send("PUT", key, {"Content-MD5": md5}, body).headers["etag"]


def _lean_class():
    """LeanS3 of s3fuse before issue 14 (``--lean-from``: a checkout of that version)."""
    spec = importlib.util.spec_from_file_location("lean_before", os.path.join(LEAN_FROM, "s3fuse", "lean.py"),
                                                  submodule_search_locations=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "s3fuse"
    spec.loader.exec_module(mod)
    return mod.LeanS3


LEAN_FROM = ""
CA = ""         # --ca: CA bundle for an HTTPS endpoint (boto3, botocore-signer, s3fuse candidates only)


class HandSignerUrllib3(BotoSignerUrllib3):
    name = "hand-signer+urllib3"

    def __init__(self, ep, bucket, ak, sk):
        super().__init__(ep, bucket, ak, sk)
        LeanS3 = _lean_class()
        self.l = LeanS3(ep, bucket, REGION, Credentials(ak, sk))
        self.http = urllib3.HTTPConnectionPool(self.l.host, self.l.port, maxsize=32)

    def _send(self, method, key, headers=None, body=None, preload=True):
        path = self.l._path(key)
        signed = self.l._sign(method, path, {}, dict(headers or {}), "UNSIGNED-PAYLOAD" if body is not None
                              else "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        return self.http.urlopen(method, path, body=body, headers=signed, preload_content=preload, retries=False)

    def get(self, key, start, end):
        r = self._send("GET", key, {"Range": f"bytes={start}-{end - 1}"}, preload=False)
        buf = bytearray(end - start)
        got = r._fp.readinto(buf)      # straight into the buffer (urllib3's readinto copies)
        r.release_conn()
        return buf[:got]


class Lean:
    name = "lean (before)"

    def __init__(self, ep, bucket, ak, sk):
        LeanS3 = _lean_class()
        self.l = LeanS3(ep, bucket, REGION, Credentials(ak, sk))

    def head(self, key):
        return int(self.l.head(key)[1]["content-length"])

    def heads(self, keys):
        return self.l.head_many(keys)

    def get(self, key, start, end):
        out = []
        self.l.get(key, start, end, None, 1 << 20, lambda o, c: out.append(c))
        return b"".join(out)

    def put(self, key, body, md5):
        return self.l.put(key, body, md5)[0]


class Crt:
    name = "awscrt"

    def __init__(self, ep, bucket, ak, sk):
        from awscrt import auth, http, io
        from urllib.parse import urlparse
        self.auth, self.http, self.io = auth, http, io
        u = urlparse(ep)
        self.host, self.port, self.hosthdr, self.b, self.ep = u.hostname, u.port or 80, u.netloc, bucket, ep
        self.elg = io.EventLoopGroup(1)
        self.bootstrap = io.ClientBootstrap(self.elg, io.DefaultHostResolver(self.elg))
        self.creds = auth.AwsCredentialsProvider.new_static(ak, sk)
        self.local = threading.local()
        self.conns: list = []
        self.lock = threading.Lock()

    def _conn(self):
        with self.lock:
            if self.conns:
                return self.conns.pop()
        return self.http.HttpClientConnection.new(self.host, self.port, bootstrap=self.bootstrap).result()

    def _cfg(self, unsigned):
        a = self.auth
        return a.AwsSigningConfig(credentials_provider=self.creds, region=REGION, service="s3",
                                  signed_body_value=a.AwsSignedBodyValue.UNSIGNED_PAYLOAD if unsigned
                                  else a.AwsSignedBodyValue.EMPTY_SHA256,
                                  signed_body_header_type=a.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
                                  use_double_uri_encode=False, should_normalize_uri_path=False)

    def _req(self, method, key, headers=(), body=None):
        import io as _io
        h = self.http.HttpHeaders([("host", self.hosthdr)] + list(headers))
        if body is not None:
            h.add("content-length", str(len(body)))
        req = self.http.HttpRequest(method, f"/{self.b}/{key}", h, _io.BytesIO(body) if body is not None else None)
        self.auth.aws_sign_request(req, self._cfg(body is not None)).result()
        return req

    def _send_async(self, method, key, headers=(), body=None):
        conn = self._conn()
        out = {"chunks": []}

        def on_response(http_stream, status_code, headers, **kw):
            out["status"], out["headers"] = status_code, {k.lower(): v for k, v in headers}

        def on_body(http_stream, chunk, **kw):
            out["chunks"].append(chunk)
        stream = conn.request(self._req(method, key, headers, body), on_response=on_response, on_body=on_body)
        stream.activate()
        return conn, stream, out

    def _finish(self, conn, stream, out):
        stream.completion_future.result()
        with self.lock:
            self.conns.append(conn)
        return out

    def _send(self, *a, **kw):
        return self._finish(*self._send_async(*a, **kw))

    def head(self, key):
        return int(self._send("HEAD", key)["headers"]["content-length"])

    def heads(self, keys):
        started = [self._send_async("HEAD", k) for k in keys]     # 16 connections in flight
        return [self._finish(*s) for s in started]

    def get(self, key, start, end):
        return b"".join(self._send("GET", key, [("range", f"bytes={start}-{end - 1}")])["chunks"])

    def put(self, key, body, md5):
        return self._send("PUT", key, [("content-md5", md5)], body)["headers"]

    def s3client(self):
        from awscrt import s3
        return s3.S3Client(bootstrap=self.bootstrap, region=REGION, tls_mode=s3.S3RequestTlsMode.DISABLED,
                           credential_provider=self.creds, part_size=8 * MiB, throughput_target_gbps=10)

    def big_get(self, key, size):
        from awscrt import s3
        got = [0]

        def on_body(chunk, offset, **kw):
            got[0] += len(chunk)
        h = self.http.HttpHeaders([("host", self.hosthdr)])
        r = self.s3client().make_request(type=s3.S3RequestType.GET_OBJECT,
                                         request=self.http.HttpRequest("GET", f"/{self.b}/{key}", h), on_body=on_body)
        r.finished_future.result()
        return got[0]

    def big_put(self, key, body):
        import io as _io
        from awscrt import s3
        h = self.http.HttpHeaders([("host", self.hosthdr), ("content-length", str(len(body)))])
        r = self.s3client().make_request(type=s3.S3RequestType.PUT_OBJECT,
                                         request=self.http.HttpRequest("PUT", f"/{self.b}/{key}", h, _io.BytesIO(body)))
        r.finished_future.result()


class Current:
    name = "s3fuse.transport (after)"

    def __init__(self, ep, bucket, ak, sk):
        from s3fuse.s3.endpoint import Endpoint, Network
        from s3fuse.s3.transport import Transport
        self.t = Transport(Endpoint.resolve(bucket, ep, REGION, True), Network(CA or None), Credentials(ak, sk))

    def head(self, key):
        return int(self.t.head(key)[1]["content-length"])

    def heads(self, keys):
        return self.t.head_many(keys)

    def get(self, key, start, end):
        out = []
        self.t.get(key, start, end, None, 1 << 20, lambda o, c: out.append(c))
        return b"".join(out)

    def put(self, key, body, md5):
        return self.t.put(key, body, md5)[0]


def per_op(fn, n):
    c0, w0 = cpu(), time.perf_counter()
    for i in range(n):
        fn(i)
    return (cpu() - c0) / n * 1000, (time.perf_counter() - w0) / n * 1000


def big(cand, key, size, part=8 * MiB, threads=8):
    """(read s, read cpu s, write s, write cpu s) of ``size`` bytes, 8 parts in flight."""
    if hasattr(cand, "big_get"):
        c0, w0 = cpu(), time.perf_counter()
        assert cand.big_get(key, size) == size
        r = (time.perf_counter() - w0, cpu() - c0)
        body = os.urandom(size)
        c0, w0 = cpu(), time.perf_counter()
        cand.big_put(key + ".w", body)
        return r + (time.perf_counter() - w0, cpu() - c0)
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    c0, w0 = cpu(), time.perf_counter()
    got = sum(len(b) for b in pool.map(lambda s: cand.get(key, s, min(s + part, size)), range(0, size, part)))
    assert got == size
    r = (time.perf_counter() - w0, cpu() - c0)
    body = os.urandom(part)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    c0, w0 = cpu(), time.perf_counter()
    # parts written as whole objects: the same bytes and requests as UploadPart
    list(pool.map(lambda i: cand.put(f"{key}.w{i}", body, md5), range(size // part)))
    pool.shutdown()
    return r + (time.perf_counter() - w0, cpu() - c0)


def main():
    ap = argparse.ArgumentParser(prog="python3 -m bench.transport")
    ap.add_argument("--endpoint", default=os.environ.get("S3FUSE_TEST_ENDPOINT", "http://127.0.0.1:7480"))
    ap.add_argument("--heads", type=int, default=1000)
    ap.add_argument("--gets", type=int, default=100)
    ap.add_argument("--puts", type=int, default=20)
    ap.add_argument("--big", type=int, default=256)
    ap.add_argument("--only", help="comma list of candidate names")
    ap.add_argument("--json")
    ap.add_argument("--lean-from", default="", help="checkout of s3fuse before issue 14 (for lean, hand-signer)")
    ap.add_argument("--ca", default="", help="CA bundle of an https:// endpoint (then only boto3, "
                                             "botocore-signer+urllib3 and s3fuse.transport run)")
    args = ap.parse_args()
    global LEAN_FROM, CA
    LEAN_FROM, CA = args.lean_from, args.ca
    ak, sk = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    https = args.endpoint.startswith("https:")
    setup = Boto(args.endpoint, "x", ak, sk).c
    bucket = "transport-" + uuid.uuid4().hex[:8]
    setup.create_bucket(Bucket=bucket)
    for i in range(16):
        setup.put_object(Bucket=bucket, Key=f"h/{i}", Body=b"x" * 100)
    blob = os.urandom(args.big * MiB)
    setup.upload_fileobj(__import__("io").BytesIO(blob), bucket, "big")
    kinds = [Boto, BotoSignerUrllib3] + ([HandSignerUrllib3, Lean] if args.lean_from and not https else [])
    if importlib.util.find_spec("awscrt") is None:       # pip install awscrt, or the bench extra
        print("awscrt not installed: its row is left out", file=sys.stderr)
    elif not https:
        kinds.append(Crt)
    if importlib.util.find_spec("s3fuse.s3.transport") is not None:   # the candidate of this tree
        kinds.append(Current)
    rows = []
    for kind in kinds:
        if args.only and not any(o in kind.name for o in args.only.split(",")):
            continue
        cand = kind(args.endpoint, bucket, ak, sk)
        cand.head("h/0")
        cand.get("big", 0, MiB)
        row = {"name": kind.name}
        row["head_cpu_ms"], row["head_wall_ms"] = per_op(lambda i: cand.head(f"h/{i % 16}"), args.heads)
        keys = [f"h/{i}" for i in range(16)]
        if hasattr(cand, "heads"):
            c, w = per_op(lambda i: cand.heads(keys), args.heads // 16)
            row["head16_cpu_ms"], row["head16_wall_ms"] = c / 16, w / 16
        row["get1m_cpu_ms"], row["get1m_wall_ms"] = per_op(lambda i: cand.get("big", (i % 64) * MiB, (i % 64 + 1) * MiB),
                                                           args.gets)
        body = blob[:8 * MiB]
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        row["put8m_cpu_ms"], row["put8m_wall_ms"] = per_op(lambda i: cand.put(f"p/{i}", body, md5), args.puts)
        r, rc, w, wc = big(cand, "big", args.big * MiB)
        row.update(read_s=r, read_cpu_s=rc, write_s=w, write_cpu_s=wc)
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    cols = ["head_cpu_ms", "head16_cpu_ms", "get1m_cpu_ms", "put8m_cpu_ms", "read_s", "read_cpu_s", "write_s",
            "write_cpu_s", "head_wall_ms", "head16_wall_ms"]
    print("| candidate | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        print(f"| {row['name']} | " + " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
