"""An HTTP proxy in front of a local S3 server that behaves like AWS where RGW does not.

``AwsLikeProxy(upstream, access_key, secret_key)`` listens on 127.0.0.1 and forwards
every request after checking what AWS checks and re-signing it for the upstream (with
botocore's own ``S3SigV4Auth``, so that rewritten requests stay valid):

- ``fake_etags``: every plain 32-hex ETag the server answers (headers and XML bodies) is
  replaced by another 32-hex value - as AWS answers for SSE-KMS and SSE-C objects and
  parts, whose ETags are not MD5s - and mapped back in the requests that name one
  (If-Match, x-amz-copy-source-if-match, the CompleteMultipartUpload body).
- ``bucket_region``: a request signed for any other region is answered like AWS answers
  it (400 AuthorizationHeaderMalformed naming the region in ``x-amz-bucket-region``).
- ``part_delay``: seconds each UploadPart is held (a window to kill a daemon mid-upload).
- ``requests``: (method, path, {lower-case header: value}) of every request received.

Plain HTTP only, bodies read whole (tests send at most tens of MiB).
"""
from __future__ import annotations

import hashlib
import http.client
import http.server
import re
import threading
import time
import urllib.parse

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_MD5ISH = re.compile(rb"(<ETag>(?:&quot;|\")?)([0-9a-f]{32})((?:&quot;|\")?</ETag>)")
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
_UNSIGNED = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "host",
             "content-length", "user-agent", "accept-encoding"}


class AwsLikeProxy:
    def __init__(self, upstream: str, access_key: str, secret_key: str, fake_etags: bool = False,
                 bucket_region: str = "", part_delay: float = 0.0):
        u = urllib.parse.urlparse(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.upstream_url = upstream.rstrip("/")
        self.auth = S3SigV4Auth(Credentials(access_key, secret_key), "s3", "us-east-1")
        self.fake_etags, self.bucket_region, self.part_delay = fake_etags, bucket_region, part_delay
        self.requests: list = []
        self.redirects = 0
        self._real: dict = {}            # fake ETag -> real
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_any(h):
                proxy._handle(h)
            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_any

            def log_message(h, *args):
                pass
        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass             # a client that closed its connection (daemon killed, unmount)
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # -- ETags ---------------------------------------------------------------------------------
    def fake(self, real: str) -> str:
        fake = hashlib.sha256(b"kms:" + real.encode()).hexdigest()[:32]
        with self._lock:
            self._real[fake] = real
        return fake

    def real(self, text: str) -> str:
        with self._lock:
            for fake, real in self._real.items():
                text = text.replace(fake, real)
        return text

    def _fake_body(self, body: bytes) -> bytes:
        return _MD5ISH.sub(lambda m: m.group(1) + self.fake(m.group(2).decode()).encode() + m.group(3), body)

    # -- one request ---------------------------------------------------------------------------
    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            self.requests.append((h.command, h.path, headers))
        scope = _SCOPE.search(headers.get("authorization", ""))
        if self.bucket_region and scope and scope.group(1) != self.bucket_region:
            with self._lock:
                self.redirects += 1
            msg = (f"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region '{scope.group(1)}' is "
                   f"wrong; expecting '{self.bucket_region}'</Message><Region>{self.bucket_region}</Region>"
                   "</Error>").encode()
            return self._answer(h, 400, [("x-amz-bucket-region", self.bucket_region),
                                         ("Content-Type", "application/xml")], msg)
        if self.part_delay and h.command == "PUT" and "partNumber=" in h.path:
            time.sleep(self.part_delay)
        if self.fake_etags:
            for name in ("if-match", "x-amz-copy-source-if-match"):
                if name in headers:
                    headers[name] = self.real(headers[name])
            if h.command == "POST" and "uploadId=" in h.path and body:
                body = self.real(body.decode()).encode()
        send = {k: v for k, v in headers.items() if k not in _UNSIGNED and k not in _HOP}
        if body:
            send["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
            if "content-md5" in send and self.fake_etags and h.command == "POST":
                send.pop("content-md5")          # the body was rewritten
        req = AWSRequest(method=h.command, url=self.upstream_url + h.path, data=body, headers=send)
        self.auth.add_auth(req)
        prepared = req.prepare()
        status, out_headers, data = self._forward(h.command, h.path, dict(prepared.headers), body)
        if self.fake_etags:
            out_headers = [(k, '"%s"' % self.fake(v.strip('"')) if k.lower() == "etag" and
                            re.fullmatch(r'"?[0-9a-f]{32}"?', v) else v) for k, v in out_headers]
            data = self._fake_body(data)
        self._answer(h, status, out_headers, data, head=h.command == "HEAD")

    def _forward(self, method, path, headers, body):
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(*self.upstream, timeout=60)
            try:
                conn.request(method, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.getheaders(), data
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("not reached")

    @staticmethod
    def _answer(h, status, headers, data, head=False):
        h.send_response_only(status)
        for k, v in headers:
            if k.lower() not in _HOP and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)) if not head else
                      next((v for k, v in headers if k.lower() == "content-length"), "0"))
        h.end_headers()
        if not head:
            h.wfile.write(data)
