"""TLS listeners for tests: a TLS front (TLS in front of a plain server) and an
https:// proxy that requires a password (CONNECT tunnels and absolute-URL requests),
recording what it saw."""
from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
import urllib.parse

_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade", "transfer-encoding"}


def pipe(a, b):
    """Bytes both ways between two sockets (either may be TLS) until one side closes."""
    while True:
        ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready = select.select([a, b], [], [], 30)[0]
            if not ready:
                return
        for s in ready:
            try:
                data = s.recv(1 << 16)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return
            if not data:
                return
            (b if s is a else a).sendall(data)


class TLSListener:
    """A TLS server on 127.0.0.1 (certificate of tests/servers/tls.py's CA); ``serve(conn)``
    of each connection on its own thread.  ``plain``: connections that did not begin
    with a TLS handshake (a client speaking plain TCP to it)."""

    def __init__(self, tls: dict):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tls["cert"], tls["key"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.plain = 0
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw):
        raw.settimeout(30)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.plain += 1
            raw.close()
            return
        self.accepted += 1
        with conn:
            try:
                self.serve(conn)
            except OSError:
                pass

    def close(self):
        self.listener.close()


class TLSFront(TLSListener):
    """HTTPS in front of a plain HTTP server (moto): every connection piped to it."""

    def __init__(self, tls: dict, upstream_port: int):
        self.upstream_port = upstream_port
        super().__init__(tls)

    def serve(self, conn):
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as up:
            pipe(conn, up)


class TLSProxy(TLSListener):
    """A forward proxy spoken to over TLS (what an ``https://`` proxy URL names): CONNECT
    tunnels and absolute-URL requests, Proxy-Authorization required when ``auth``
    (user, password) is given.  ``requests``: (method, target, Proxy-Authorization)."""

    def __init__(self, tls: dict, auth=None):
        self.auth = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        self.user = f"{auth[0]}:{auth[1]}@" if auth else ""
        self.requests: list = []
        self.tunnels = 0
        super().__init__(tls)
        self.url = f"https://{self.user}127.0.0.1:{self.port}"

    def serve(self, conn):
        rfile = conn.makefile("rb")
        while True:
            line = rfile.readline(65537)
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = []
            while True:
                h = rfile.readline(65537)
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers.append((name.strip(), value.strip()))
            lower = {n.lower(): v for n, v in headers}
            self.requests.append((method, target, lower.get("proxy-authorization")))
            if self.auth and lower.get("proxy-authorization") != self.auth:
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                with socket.create_connection((host, int(port)), timeout=30) as up:
                    self.tunnels += 1
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    pipe(conn, up)
                return
            assert "chunked" not in lower.get("transfer-encoding", ""), "not for this proxy"
            body = rfile.read(int(lower.get("content-length") or 0))
            u = urllib.parse.urlsplit(target)
            up = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
            up.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body or None,
                       headers={n: v for n, v in headers if n.lower() not in _HOP})
            resp = up.getresponse()
            data = resp.read()
            up.close()
            kept = [(n, v) for n, v in resp.getheaders()
                    if n.lower() not in _HOP and (n.lower() != "content-length" or method == "HEAD")]
            head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in kept)
            if method != "HEAD":
                head += f"Content-Length: {len(data)}\r\n"
            conn.sendall(head.encode("latin-1") + b"\r\n" + (b"" if method == "HEAD" else data))
