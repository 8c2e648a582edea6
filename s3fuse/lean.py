"""Lean requests for path-style endpoints: SigV4 by hand over keep-alive http.client.

botocore's CPU per request (signing, event hooks, parsing) runs under the GIL, and over
plain HTTP it also SHA-256-hashes every upload body for the signature (figures in
docs/design/reads.md and writes.md).  On a machine shared with the S3 server that CPU
is the limit: exact POSIX metadata needs one HEAD per object.  This module does HEAD (also pipelined batches), GET, ListObjectsV2, DELETE and PUT
(PutObject, UploadPart) itself: bodies are sent with ``UNSIGNED-PAYLOAD`` and protected
by ``Content-MD5`` instead.  GET reads bodies straight into block-sized buffers
(botocore/urllib3 copy each block two or three times).

Used only by ``s3.ObjectClient`` for custom (path-style) endpoints, inside its retry
layer.  Connection trouble (after replacing a stale keep-alive connection once) raises
``errors.Unreachable`` and 5xx/429 raise ``errors.ServerBusy``: the retry layer backs
off at once.  Any other answer it does not fully understand (3xx, 4xx other than a
HEAD's 404) returns None and the caller asks botocore for the typed error.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import threading
import time
import urllib.parse
from typing import Callable, Optional

from . import errors

UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_IDLE = 32       # idle keep-alive connections kept per kind (more are closed)


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogateescape"), safe=safe)


class LeanS3:
    def __init__(self, endpoint: str, bucket: str, region: str, credentials, timeout: float = 30.0,
                 connect_timeout: float = 10.0, observe: Optional[Callable[[str, object, int], None]] = None):
        u = urllib.parse.urlparse(endpoint)
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.host_header = u.netloc
        self.base_path = u.path.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.credentials = credentials      # botocore Credentials (refreshable)
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self._idle_lock = threading.Lock()     # leaf lock: guards the two idle lists only
        self._idle: list = []                  # keep-alive http.client connections
        self._idle_pipes: list = []            # raw sockets for pipelined HEADs
        self.connections_opened = 0            # for the status file (and the tests)
        self._keys: dict = {}
        # observe(S3 operation, HTTP status or "unreachable"/"timeout", body bytes sent):
        # every request sent, as the client counts them (metrics, status file)
        self.observe = observe or (lambda op, status, sent: None)

    # -- plumbing ------------------------------------------------------------------------
    # Connections are checked out of a shared idle list for one request and returned once
    # its answer is read: FUSE callbacks run on libfuse threads where ctypes gives every
    # call a fresh Python thread state, so per-thread (threading.local) connections died
    # with each callback and every PUT from close() paid a new TCP connection.
    def _take(self, idle: list, connect: Callable):
        """An idle connection from ``idle`` (``self._idle`` or ``self._idle_pipes``), or a new one."""
        with self._idle_lock:
            if idle:
                return idle.pop()
            self.connections_opened += 1
        return connect()

    def _give_back(self, idle: list, conn):
        with self._idle_lock:
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _new_conn(self):
        """A connected keep-alive connection: ``connect_timeout`` to connect, then
        ``timeout`` for every read."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.timeout)
        return conn

    def _new_pipe(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _signing_key(self, secret: str, datestamp: str) -> bytes:
        cached = self._keys.get((secret, datestamp))
        if cached is None:
            k = hmac.new(("AWS4" + secret).encode(), datestamp.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, datestamp): k}
            cached = k
        return cached

    def _path(self, key: str) -> str:
        return self.base_path + "/" + _quote(self.bucket) + "/" + _quote(key, safe="/-_.~")

    def _sign(self, method: str, path: str, query: dict, headers: dict, payload_hash: str) -> dict:
        creds = self.credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        datestamp = amz_date[:8]
        headers = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        headers.update({"host": self.host_header, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date})
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        signed = sorted(k for k in headers if k in ("host", "content-md5", "content-type") or k.startswith("x-amz-"))
        canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        canonical = "\n".join([method, path, canonical_query, "".join(f"{n}:{headers[n]}\n" for n in signed),
                               ";".join(signed), payload_hash])
        scope = f"{datestamp}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(creds.secret_key, datestamp), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={signature}")
        return headers

    def _open(self, method: str, key: Optional[str], query: Optional[dict] = None,
              headers: Optional[dict] = None, body: bytes = b""):
        """Send a signed request on an idle keep-alive connection: (connection, response
        with its body unread).  A stale keep-alive connection is replaced once; other
        connection trouble raises Unreachable, and a 5xx/429 answer ServerBusy.  The
        caller reads the body, then hands the connection to ``_done``.  ``key`` None
        addresses the bucket itself."""
        path = self._path(key) if key is not None else self.base_path + "/" + _quote(self.bucket)
        query = query or {}
        url = path + ("?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())) if query else "")
        what = f"{method} {key!r}"
        op = _operation(method, key, query)
        for attempt in (0, 1):
            conn = None
            try:
                if attempt:      # the pooled one was stale: so may be the others
                    with self._idle_lock:
                        self.connections_opened += 1
                    conn = self._new_conn()
                else:
                    conn = self._take(self._idle, self._new_conn)
                signed = self._sign(method, path, query, dict(headers or {}),
                                    UNSIGNED if method == "PUT" else EMPTY_SHA256)
                if method == "PUT":
                    signed["content-length"] = str(len(body))
                conn.request(method, url, body=body if method == "PUT" else None, headers=signed)
                resp = conn.getresponse()
            except TimeoutError:
                if conn is not None:
                    conn.close()
                self.observe(op, "timeout", 0)
                raise errors.with_status(errors.Unreachable(f"{what}: timed out"), "timeout") from None
            except (http.client.HTTPException, OSError) as exc:
                if conn is not None:
                    conn.close()     # e.g. a keep-alive connection the server closed
                if attempt:
                    self.observe(op, "unreachable", 0)
                    raise errors.with_status(errors.Unreachable(f"{what}: {exc or exc.__class__.__name__}"),
                                             "unreachable") from None
                continue
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self.observe(op, resp.status, len(body) if method == "PUT" else 0)
            if resp.status >= 500 or resp.status == 429:
                try:
                    detail = resp.read()[:2000]
                    self._done(conn, resp)
                except (http.client.HTTPException, OSError):
                    detail = b""
                    self._done(conn, resp, reusable=False)
                code = _error_code(detail)
                raise errors.with_status(errors.ServerBusy(f"{what}: {resp.status}{' ' + code if code else ''}"),
                                         resp.status)
            return conn, resp
        raise AssertionError("not reached")

    def _done(self, conn, resp, reusable: bool = True):
        """Give back a connection whose answer was read to its end (``reusable``), or close
        it (also when the server said ``Connection: close``: http.client's ``will_close``)."""
        if reusable and not resp.will_close:
            self._give_back(self._idle, conn)
        else:
            conn.close()

    def _request(self, method: str, key: Optional[str], query: Optional[dict] = None,
                 headers: Optional[dict] = None, body: bytes = b"", want_body: bool = False) -> tuple:
        """(status, {lower-case header: value}[, body])."""
        conn, resp = self._open(method, key, query, headers, body)
        try:
            data = resp.read()
        except (http.client.HTTPException, OSError) as exc:
            self._done(conn, resp, reusable=False)
            raise errors.with_status(errors.Unreachable(f"{method} {key!r}: answer cut ({exc.__class__.__name__})"),
                                     "cut") from None
        except BaseException:
            self._done(conn, resp, reusable=False)
            raise
        answer = {k.lower(): v for k, v in resp.getheaders()}
        self._done(conn, resp)
        return (resp.status, answer, data) if want_body else (resp.status, answer)

    # -- operations -------------------------------------------------------------------------
    def get(self, key: str, start: int, end: int, etag: Optional[str], chunk_size: int,
            deliver: Callable[[int, bytearray], None]) -> Optional[tuple]:
        """Ranged GET of [start, end): the body goes to ``deliver(offset, chunk)`` in
        ``chunk_size`` bytearrays (the last one shorter), each read straight from the
        socket into its buffer: no copy in Python, one GIL round trip per chunk.

        Returns (status, offset reached).  For 200/206 the offset is ``end`` unless the
        body was cut (the caller asks again from there); other statuses deliver nothing.
        None: an answer that is not the range asked for (the caller uses botocore)."""
        headers = {"range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["if-match"] = f'"{etag}"'
        conn, resp = self._open("GET", key, headers=headers)
        if resp.status not in (200, 206):
            try:
                resp.read()
            except (http.client.HTTPException, OSError):
                self._done(conn, resp, reusable=False)
            else:
                self._done(conn, resp)
            return resp.status, start
        length = resp.length
        if length is None or length != end - start:
            self._done(conn, resp, reusable=False)     # not the range asked for (a server ignoring Range)
            return None
        offset = start
        try:
            while offset < end:
                chunk = bytearray(min(chunk_size, end - offset))
                got = resp.readinto(chunk)
                while 0 < got < len(chunk):
                    more = resp.readinto(memoryview(chunk)[got:])
                    if not more:
                        break
                    got += more
                if got < len(chunk):
                    raise http.client.IncompleteRead(bytes(chunk[:got]))
                deliver(offset, chunk)
                offset += got
        except (http.client.HTTPException, OSError):
            self._done(conn, resp, reusable=False)
            return resp.status, offset
        except BaseException:
            self._done(conn, resp, reusable=False)     # the body was not read to its end
            raise
        self._done(conn, resp)
        return resp.status, offset

    def list_objects(self, query: dict) -> Optional[bytes]:
        """ListObjectsV2 with ``query`` (list-type=2 added); the XML body of a 200, else
        None (botocore asks again for the typed error)."""
        answer = self._request("GET", None, query=dict(query, **{"list-type": "2"}), want_body=True)
        return answer[2] if answer[0] == 200 else None

    def head_many(self, keys: list) -> list:
        """HEADs of ``keys`` pipelined on one idle connection (HTTP/1.1: all
        requests written at once, the answers read in order).  RGW and MinIO answer a
        pipelined batch as fast as parallel connections, for half the client CPU per
        HEAD (no http.client/email header parsing, one send, few receives).  Returns one
        (status, {lower-case header: value}) per key, or None where the batch broke off
        (the caller asks those again one by one)."""
        if not keys or self.https:
            return [None] * len(keys)
        results: list = []
        sock = None
        try:
            sock = self._take(self._idle_pipes, self._new_pipe)
            requests = []
            for key in keys:
                path = self._path(key)
                headers = self._sign("HEAD", path, {}, {}, EMPTY_SHA256)
                requests.append(f"HEAD {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                                + "\r\n")
            sock.sendall("".join(requests).encode("latin-1"))
            buf = b""
            while len(results) < len(keys):
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    data = sock.recv(1 << 16)
                    if not data:
                        raise ConnectionError("server closed the connection")
                    buf += data
                    continue
                lines = buf[:end].decode("latin-1").split("\r\n")
                buf = buf[end + 4:]
                status = int(lines[0].split(" ", 2)[1])
                answer = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    answer[name.strip().lower()] = value.strip()
                results.append((status, answer))
                self.observe("head_object", status, 0)
                if answer.get("connection", "").lower() == "close":
                    raise ConnectionError("server closes the connection")
            if buf:
                raise ConnectionError("unexpected bytes after the last answer")
        except (OSError, ValueError, IndexError, UnicodeError):
            if sock is not None:
                sock.close()
            return results + [None] * (len(keys) - len(results))
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        self._give_back(self._idle_pipes, sock)
        return results

    def head(self, key: str) -> Optional[tuple]:
        answer = self._request("HEAD", key)
        return answer if answer[0] in (200, 404) else None

    def delete(self, key: str) -> bool:
        """DeleteObject; True once the server answered 204/200 (S3 answers so for a key
        that does not exist too), False to ask botocore."""
        return self._request("DELETE", key)[0] in (200, 204)

    def put(self, key: str, body: bytes, content_md5: str, metadata: Optional[dict] = None,
            headers: Optional[dict] = None, query: Optional[dict] = None) -> Optional[tuple]:
        """PutObject (or UploadPart with ``query``) with user ``metadata`` and content
        ``headers`` (objects.CONTENT_HEADERS); returns (ETag, the answer's Date header),
        or None to fall back."""
        sent = {"content-md5": content_md5}
        for name, value in (headers or {}).items():
            if not str(value).isascii():
                return None
            sent[name] = value
        for name, value in (metadata or {}).items():
            if not str(value).isascii() or not str(name).isascii():
                return None     # botocore knows how to send those
            sent[f"x-amz-meta-{name}"] = value
        answer = self._request("PUT", key, query=query, headers=sent, body=body)
        etag = answer[1].get("etag", "").strip('"') if answer[0] == 200 else ""
        return (etag, answer[1].get("date")) if etag else None


def _operation(method: str, key: Optional[str], query: dict) -> str:
    """The S3 operation of a lean request, as botocore names it."""
    if method == "GET":
        return "get_object" if key is not None else "list_objects_v2"
    if method == "PUT":
        return "upload_part" if "partNumber" in query else "put_object"
    return {"HEAD": "head_object", "DELETE": "delete_object"}.get(method, method.lower())


def _error_code(body: bytes) -> str:
    """The <Code> of an S3 error document ("SlowDown"...), or ""."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    return body[start + 6:end].decode("ascii", "replace") if 0 <= start < end else ""
