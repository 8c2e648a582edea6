"""The data path of every endpoint, AWS or not: HEAD (also pipelined batches), ranged GET,
ListObjectsV2, PutObject/UploadPart and DeleteObject (and the POSTs and DELETE of a
multipart upload, ``multipart.py``), hand-signed (``sigv4``) over
pooled keep-alive ``http.client`` connections made by ``endpoint.Network`` (TLS with
the CA bundle, ``HTTP(S)_PROXY``/``NO_PROXY``, a short connect timeout).

Why not a library for this: docs/design/transport.md measures botocore, botocore's
signer over urllib3 and awscrt against it.  In short: per request, botocore costs 5x the
client CPU, urllib3 adds ~0.1 ms and a copy per GET block, awscrt 3-7x the CPU per GET
and PUT from Python (and its S3 client has no proxy setting in Python); no library
pipelines HTTP/1.1 requests, which halves the cost of the HEADs of a cold ``ls -l``.

Used by ``s3.ObjectClient`` inside its retry layer.  Answers become typed errors here
(``objects.error_kind``): connection trouble raises ``errors.Unreachable`` (after
replacing a stale keep-alive connection once), 5xx/429 ``errors.ServerBusy``.  A 301 or
400 naming another region (``x-amz-bucket-region``) moves the endpoint to it
(``on_region``) and is sent again once.  ``None`` means "not done here": the caller
asks botocore and counts a fallback.
"""
from __future__ import annotations

import hashlib
import http.client
import threading
from typing import Callable, Optional

from .. import errors
from .endpoint import Endpoint, Network, quote
from .objects import error_code, error_kind, error_region, error_server_time, refusal_time
from .sigv4 import EMPTY_SHA256, UNSIGNED, Signer

MAX_IDLE = 32       # idle keep-alive connections kept per kind (more are closed)


class _RegionMoved(Exception):
    pass


class Transport:
    def __init__(self, endpoint: Endpoint, network: Network, credentials,
                 on_region: Optional[Callable[[str], None]] = None,
                 observe: Optional[Callable[[str, object, int], None]] = None,
                 clock: Optional[Callable[[], float]] = None):
        self.endpoint = endpoint
        self.network = network
        self.signer = Signer(credentials, clock) if clock is not None else Signer(credentials)
        self.on_region = on_region
        self.common_headers: dict = {}         # every request (x-amz-request-payer)
        self.read_headers: dict = {}           # GET and HEAD (SSE-C key)
        self._idle_lock = threading.Lock()     # leaf lock: guards the two idle lists only
        self._idle: list = []                  # keep-alive http.client connections
        self._idle_pipes: list = []            # connections used for pipelined HEADs
        self.connections_opened = 0            # for the status file (and the tests)
        # observe(S3 operation, HTTP status or "unreachable"/"timeout", body bytes sent):
        # every request sent, as the client counts them (metrics, status file)
        self.observe = observe or (lambda op, status, sent: None)

    # -- connections ---------------------------------------------------------------------
    # Connections are checked out of a shared idle list for one request and returned once
    # its answer is read: FUSE callbacks run on libfuse threads where ctypes gives every
    # call a fresh Python thread state, so per-thread (threading.local) connections died
    # with each callback and every PUT from close() paid a new TCP connection.
    def _take(self, idle: list):
        while True:
            with self._idle_lock:
                if not idle:
                    self.connections_opened += 1
                    break
                conn = idle.pop()
            if conn.host_id == self.endpoint.connect_host:
                return conn
            conn.close()         # made for the host of another region
        return self._connect()

    def _give_back(self, idle: list, conn):
        with self._idle_lock:
            if len(idle) < MAX_IDLE and conn.host_id == self.endpoint.connect_host:
                idle.append(conn)
                return
        conn.close()

    def _connect(self):
        ep = self.endpoint
        try:
            conn = self.network.connect(ep.scheme, ep.connect_host, ep.port)
        except TimeoutError:
            raise errors.with_status(errors.Unreachable(f"connect to {ep.connect_host}:{ep.port}: timed out"),
                                     "timeout") from None
        except OSError as exc:     # refused, DNS, TLS (certificate), proxy refused the tunnel
            raise errors.with_status(errors.Unreachable(f"connect to {ep.connect_host}:{ep.port}: {exc}"),
                                     "unreachable") from None
        conn.host_id = ep.connect_host
        return conn

    def _fresh(self):
        with self._idle_lock:
            self.connections_opened += 1
        return self._connect()

    def _move_region(self, region: str):
        self.endpoint.set_region(region)
        with self._idle_lock:
            stale, self._idle, self._idle_pipes = self._idle + self._idle_pipes, [], []
        for conn in stale:
            conn.close()
        if self.on_region is not None:
            self.on_region(region)

    # -- one request -----------------------------------------------------------------------
    def _open(self, method: str, key: Optional[str], query: Optional[dict] = None,
              headers: Optional[dict] = None, body: bytes = b"", ok: tuple = (200, 204, 206)):
        """Send a signed request: (connection, response with its body unread) for a status
        in ``ok``.  Other statuses raise their error kind (a region move is followed
        once).  The caller reads the body, then hands the connection to ``_done``.
        ``key`` None addresses the bucket itself."""
        what = f"{method} {key!r}"
        for moves in (0, 1):
            try:
                return self._open_once(method, key, query or {}, headers, body, ok, what)
            except _RegionMoved as moved:
                if moves:
                    raise errors.BackendError(f"{what}: the bucket's region keeps moving ({moved})") from None
        raise AssertionError("not reached")

    def _open_once(self, method, key, query, headers, body, ok, what):
        ep = self.endpoint
        path = ep.path(key)
        url = path + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items())) if query else "")
        if self.network.absolute(ep.scheme, ep.connect_host):
            url = f"{ep.scheme}://{ep.host_header}{url}"
        op = _operation(method, key, query, headers)
        sent = dict(self.common_headers)
        if method in ("GET", "HEAD"):
            sent.update(self.read_headers)
        sent.update(headers or {})
        sends = method in ("PUT", "POST")
        payload = payload_hash(body, ep.https) if sends else EMPTY_SHA256
        for attempt in (0, 1):
            conn = None
            try:
                conn = self._fresh() if attempt else self._take(self._idle)
                signed = self.signer.sign(ep.region, method, ep.host_header, path, query, sent, payload)
                signed.update(getattr(conn, "proxy_headers", None) or {})
                if sends:
                    signed["content-length"] = str(len(body))
                conn.request(method, url, body=body if sends else None, headers=signed)
                resp = conn.getresponse()
            except errors.Unreachable as exc:       # no connection could be made
                self.observe(op, getattr(exc, "status", "unreachable"), 0)
                raise
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
            self.observe(op, resp.status, len(body) if sends else 0)
            if resp.status in ok:
                return conn, resp
            self._fail(conn, resp, what)
        raise AssertionError("not reached")

    def _fail(self, conn, resp, what: str):
        """Raise the error an answer means (its body read, its connection given back)."""
        try:
            detail = resp.read()[:4000]
            self._done(conn, resp)
        except (http.client.HTTPException, OSError):
            detail = b""
            self._done(conn, resp, reusable=False)
        code = error_code(detail)
        region = resp.getheader("x-amz-bucket-region") or error_region(detail)
        if resp.status in (301, 400) and region and region != self.endpoint.region:
            self._move_region(region)
            raise _RegionMoved(region)
        if resp.status in (301, 307) and not code:
            code = "PermanentRedirect"
        exc = error_kind(code, resp.status)(f"{what}: {resp.status}{' ' + code if code else ''}")
        refusal_time(exc, resp.getheader("date"), error_server_time(detail))
        raise errors.with_status(exc, resp.status)

    def _done(self, conn, resp, reusable: bool = True):
        """Give back a connection whose answer was read to its end (``reusable``), or close
        it (also when the server said ``Connection: close``: http.client's ``will_close``)."""
        if reusable and not resp.will_close:
            self._give_back(self._idle, conn)
        else:
            conn.close()

    def _request(self, method: str, key: Optional[str], query: Optional[dict] = None,
                 headers: Optional[dict] = None, body: bytes = b"", ok: tuple = (200, 204)) -> tuple:
        """(status, {lower-case header: value}, body)."""
        conn, resp = self._open(method, key, query, headers, body, ok)
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
        return resp.status, answer, data

    # -- operations -------------------------------------------------------------------------
    def get(self, key: str, start: int, end: int, etag: Optional[str], chunk_size: int,
            deliver: Callable[[int, bytearray], None], alloc: Optional[Callable[[], bytearray]] = None) -> Optional[int]:
        """Ranged GET of [start, end): the body goes to ``deliver(offset, chunk)`` in
        ``chunk_size`` bytearrays (the last one shorter), each read straight from the
        socket into its buffer: no copy in Python, one GIL round trip per chunk.  Full
        chunks are ``alloc()``'s buffers when given (reused, not zeroed: filled or dropped).

        Returns the offset reached: ``end`` unless the body was cut (the caller asks again
        from there).  404 raises NotFound, 412 ObjectChanged.  None: an answer that is
        not the range asked for (the caller uses botocore)."""
        headers = {"range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["if-match"] = f'"{etag}"'
        try:
            conn, resp = self._open("GET", key, headers=headers, ok=(200, 206))
        except errors.NotFound as exc:
            raise errors.with_status(errors.NotFound(f"get {key!r}: {exc}"), 404) from None
        except errors.ObjectChanged:
            raise errors.with_status(errors.ObjectChanged(f"get {key!r}: changed on the server (412)"), 412) from None
        length = resp.length
        if length is None or length != end - start:
            self._done(conn, resp, reusable=False)     # not the range asked for (a server ignoring Range)
            return None
        offset = start
        try:
            while offset < end:
                want = min(chunk_size, end - offset)
                chunk = alloc() if alloc is not None and want == chunk_size else bytearray(want)
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
            return offset
        except BaseException:
            self._done(conn, resp, reusable=False)     # the body was not read to its end
            raise
        self._done(conn, resp)
        return offset

    def list_objects(self, query: dict) -> bytes:
        """ListObjectsV2 with ``query`` (list-type=2 added): the XML body."""
        return self._request("GET", None, query=dict(query, **{"list-type": "2"}))[2]

    def head(self, key: str) -> tuple:
        """(200, headers) or (404, headers); other answers raise."""
        status, answer, _ = self._request("HEAD", key, ok=(200, 404))
        return status, answer

    def delete(self, key: str):
        """DeleteObject (S3 answers 204 for a key that does not exist too)."""
        self._request("DELETE", key, ok=(200, 204))

    def put(self, key: str, body: bytes, content_md5: Optional[str], metadata: Optional[dict] = None,
            headers: Optional[dict] = None, query: Optional[dict] = None) -> Optional[tuple]:
        """PutObject (or UploadPart with ``query``) with user ``metadata`` and ``headers``
        (content headers, SSE, storage class, ACL); returns (ETag as the server answered,
        the answer's Date header), or None for what botocore must send (non-ASCII
        metadata)."""
        sent = ascii_headers(metadata, headers)
        if sent is None:
            return None
        if content_md5:
            sent["content-md5"] = content_md5
        _, answer, _ = self._request("PUT", key, query=query, headers=sent, body=body, ok=(200,))
        etag = answer.get("etag", "").strip('"')
        if not etag:
            raise errors.BackendError(f"PUT {key!r}: the answer has no ETag")
        return etag, answer.get("date")

    def head_many(self, keys: list) -> list:
        """HEADs of ``keys`` pipelined on one idle connection (HTTP/1.1: all requests
        written at once, the answers read in order).  RGW and MinIO answer a pipelined
        batch as fast as parallel connections, for a fifth of the client CPU per HEAD
        (no http.client/email header parsing, one send, few receives).  Returns one
        (status, {lower-case header: value}) per key, or None where the batch broke off
        or an answer was not 200/404 (the caller asks those again one by one).  Not
        through a plain-HTTP proxy (which may not pipeline)."""
        ep = self.endpoint
        if not keys or self.network.absolute(ep.scheme, ep.connect_host):
            return [None] * len(keys)
        results: list = []
        conn = None
        try:
            conn = self._take(self._idle_pipes)
            sock = conn.sock
            requests = []
            sent = dict(self.common_headers, **self.read_headers)
            for key in keys:
                path = ep.path(key)
                headers = self.signer.sign(ep.region, "HEAD", ep.host_header, path, {}, sent, EMPTY_SHA256)
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
                if status not in (200, 404):
                    raise ConnectionError(f"answer {status}")     # asked again one by one
                results.append((status, answer))
                self.observe("head_object", status, 0)
                if answer.get("connection", "").lower() == "close":
                    raise ConnectionError("server closes the connection")
            if buf:
                raise ConnectionError("unexpected bytes after the last answer")
        except errors.Unreachable:
            return [None] * len(keys)
        except (OSError, ValueError, IndexError, UnicodeError):
            if conn is not None:
                conn.close()
            return results + [None] * (len(keys) - len(results))
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._give_back(self._idle_pipes, conn)
        return results


def ascii_headers(metadata: Optional[dict], headers: Optional[dict]) -> Optional[dict]:
    """``headers`` and ``metadata`` (as x-amz-meta-*) to send, or None if one is not
    ASCII (botocore knows how to send those)."""
    sent = {}
    for name, value in (headers or {}).items():
        if not str(value).isascii():
            return None
        sent[name] = value
    for name, value in (metadata or {}).items():
        if not str(value).isascii() or not str(name).isascii():
            return None
        sent[f"x-amz-meta-{name}"] = value
    return sent


def payload_hash(body: bytes, tls: bool) -> str:
    """x-amz-content-sha256 of a PUT: UNSIGNED-PAYLOAD over TLS (which protects the body;
    Content-MD5 guards it against corruption), its SHA-256 over plain http, where only
    the signature does (as botocore signs).  hashlib releases the GIL: ~1.4 GB/s,
    half the cost of the MD5 each body already has (measured on the test machine)."""
    return UNSIGNED if tls else hashlib.sha256(body).hexdigest()


def _operation(method: str, key: Optional[str], query: dict, headers: Optional[dict] = None) -> str:
    """The S3 operation of a request, as botocore names it."""
    if headers and "x-amz-copy-source" in headers:
        return "copy_object"
    if method == "GET":
        return "get_object" if key is not None else "list_objects_v2"
    if method == "PUT":
        return "upload_part" if "partNumber" in query else "put_object"
    if method == "POST":
        return "create_multipart_upload" if "uploads" in query else "complete_multipart_upload"
    if method == "DELETE" and "uploadId" in query:
        return "abort_multipart_upload"
    return {"HEAD": "head_object", "DELETE": "delete_object"}.get(method, method.lower())
